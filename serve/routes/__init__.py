"""HTTP routers, one module per resource; ``serve.webapp.ROUTERS`` lists the mounted ones."""
