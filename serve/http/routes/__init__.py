"""HTTP routers, one module per resource; ``serve.http.webapp.ROUTERS`` lists the mounted ones."""
