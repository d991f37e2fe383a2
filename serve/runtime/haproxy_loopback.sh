#!/bin/sh
# Ray Serve's HAProxy binary (RAY_SERVE_HAPROXY_BINARY_PATH, set by serve.fastmode): Ray's template binds HAProxy's
# stats page and Prometheus exporter on all interfaces ("bind *:PORT", "bind :PORT"); rewrite those two binds to
# 127.0.0.1 in a copy of the config (the HTTP frontend keeps the Serve host), then exec the real HAProxy
# ($EMOTION_HAPROXY_BINARY) with the copy.
set -eu
real="${EMOTION_HAPROXY_BINARY:?EMOTION_HAPROXY_BINARY must name the real haproxy binary}"
cfg="" prev=""
for arg in "$@"; do
    [ "$prev" = "-f" ] && cfg="$arg"
    prev="$arg"
done
[ -n "$cfg" ] || exec "$real" "$@"
# On a reload Ray may hand back the path it last started us with (our copy): always rewrite from Ray's own file,
# which is where it writes the new configuration, into one copy beside it.
base="${cfg%%.loopback*}"
[ -f "$base" ] || base="$cfg"
copy="$base.loopback"
awk '/^[a-z]/ { section = $1 " " $2 }
     (section == "frontend prometheus" || section == "listen stats") && /^[[:space:]]*bind[[:space:]]+\*?:/ {
         sub(/bind[[:space:]]+\*?:/, "bind 127.0.0.1:")
     }
     { print }' "$base" > "$copy.tmp"
mv "$copy.tmp" "$copy"
for arg in "$@"; do
    shift
    if [ "$arg" = "$cfg" ]; then set -- "$@" "$copy"; else set -- "$@" "$arg"; fi
done
exec "$real" "$@"
