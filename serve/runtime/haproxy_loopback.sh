#!/bin/sh
# Ray Serve's HAProxy binary (RAY_SERVE_HAPROXY_BINARY_PATH, set by serve.fastmode). Ray writes HAProxy's config from
# its own template; this wrapper rewrites a copy of it, then execs the real HAProxy ($EMOTION_HAPROXY_BINARY) with
# the copy:
#
# * loopback: the template binds the stats page and the Prometheus exporter on all interfaces ("bind *:PORT",
#   "bind :PORT"); those two binds become 127.0.0.1 (the HTTP frontend keeps the Serve host).
# * retries: Ray retries only connection failures ("retry-on conn-failure", HAProxy's default of 3 retries). A
#   request already sent to an ingress replica that then died gets no answer at all (on a keep-alive connection
#   HAProxy just closes it), so "empty-response" joins Ray's default (this service's HTTP routes are idempotent),
#   with "option http-buffer-request" (the whole body is read before it is sent on, so that it can be sent again:
#   HAProxy replays only what it holds in one buffer) and, unless RAY_SERVE_HAPROXY_RETRIES set a number,
#   "retries $EMOTION_HAPROXY_RETRIES" (default 6: a dead replica is marked down after 3 failed connections, then
#   "option redispatch 1" sends the retry to another replica, or to the head's fallback proxy, which holds it until
#   an ingress replica is back). A RAY_SERVE_HAPROXY_RETRY_ON of the operator's own is left alone.
# * buffer: Ray's "tune.bufsize 16384" would make every photo unreplayable; it becomes $EMOTION_HAPROXY_BUFSIZE
#   (default 1 MiB; memory is taken per request in flight, as far as its data goes). A bufsize Ray was told
#   (RAY_SERVE_HAPROXY_TUNE_BUFSIZE) is left alone.
# * errors: Ray answers HAProxy's own 502/503/504 (no replica answered) with a plain "500 Internal Server Error";
#   they become the service's "503 overloaded" JSON error with Retry-After ($EMOTION_RETRY_AFTER_S, default 1).
# * no orphan: HAProxy runs in the foreground as a child of Ray's HAProxyManager actor; when that process dies
#   without stopping it (SIGKILL, `ray stop --force`), HAProxy would keep the HTTP port. A small watchdog stops
#   HAProxy once its parent is gone (checked every second).
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
retry_after="${EMOTION_RETRY_AFTER_S:-1}"
case "$retry_after" in '' | *[!0-9]*) retry_after=1 ;; esac
retries="${EMOTION_HAPROXY_RETRIES:-6}"
case "$retries" in '' | *[!0-9]*) retries=6 ;; esac
bufsize="${EMOTION_HAPROXY_BUFSIZE:-1048576}"
case "$bufsize" in '' | *[!0-9]*) bufsize=1048576 ;; esac
errorpage="$(dirname "$base")/emotion-503.http"
body='{"error":{"code":"overloaded","message":"no ingress replica could answer; retry later"},"request_id":""}'
printf 'HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: %s\r\nCache-Control: no-cache\r\nConnection: close\r\nContent-Length: %s\r\n\r\n%s' \
    "$retry_after" "${#body}" "$body" > "$errorpage.tmp"
mv "$errorpage.tmp" "$errorpage"
awk -v retries="$retries" -v bufsize="$bufsize" -v errorpage="$errorpage" '
     /^[a-z]/ { section = $1 " " $2; kind = $1 }
     kind == "defaults" && $1 == "retries" { has_retries = 1 }
     { lines[NR] = $0; sections[NR] = section; kinds[NR] = kind }
     END {
         for (i = 1; i <= NR; i++) {
             line = lines[i]
             if ((sections[i] == "frontend prometheus" || sections[i] == "listen stats") &&
                 line ~ /^[[:space:]]*bind[[:space:]]+\*?:/) {
                 sub(/bind[[:space:]]+\*?:/, "bind 127.0.0.1:", line)
             }
             if (kinds[i] == "defaults" && line ~ /^[[:space:]]*errorfile[[:space:]]+50[234][[:space:]]+[^[:space:]]*\/500\.http[[:space:]]*$/) {
                 sub(/[^[:space:]]*\/500\.http/, errorpage, line)
             }
             if (kinds[i] == "global" && line ~ /^[[:space:]]*tune\.bufsize[[:space:]]+16384[[:space:]]*$/) {
                 print "    tune.bufsize " bufsize
                 continue
             }
             if (kinds[i] == "defaults" && line ~ /^[[:space:]]*retry-on[[:space:]]+conn-failure[[:space:]]*$/) {
                 print "    retry-on conn-failure empty-response"
                 if (!has_retries) print "    retries " retries
                 print "    option http-buffer-request"
                 continue
             }
             print line
         }
     }' "$base" > "$copy.tmp"
mv "$copy.tmp" "$copy"
for arg in "$@"; do
    shift
    if [ "$arg" = "$cfg" ]; then set -- "$@" "$copy"; else set -- "$@" "$arg"; fi
done
# The watchdog: this shell's PID becomes HAProxy's at `exec`; its parent is Ray's HAProxyManager. HAProxy is an
# orphan once its parent PID is no longer the manager's (Linux: /proc; elsewhere: the manager's PID is gone). The
# watchdog holds none of HAProxy's sockets (it is forked before HAProxy opens them) and leaves when HAProxy exits
# (e.g. replaced on a reload).
haproxy_pid=$$
manager_pid=$PPID
(
    trap '' HUP INT
    orphaned() {
        if [ -r "/proc/$haproxy_pid/stat" ]; then
            stat="$(cat "/proc/$haproxy_pid/stat" 2>/dev/null)" || return 1
            set -- ${stat##*) }
            [ "$2" != "$manager_pid" ]
        else
            ! kill -0 "$manager_pid" 2>/dev/null
        fi
    }
    while kill -0 "$haproxy_pid" 2>/dev/null; do
        if orphaned; then
            kill -TERM "$haproxy_pid" 2>/dev/null || exit 0
            sleep 2
            kill -KILL "$haproxy_pid" 2>/dev/null || true
            exit 0
        fi
        sleep 1
    done
) < /dev/null > /dev/null 2>&1 &
exec "$real" "$@"
