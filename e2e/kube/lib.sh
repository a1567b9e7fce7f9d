# shellcheck shell=bash
# e2e/kube/lib.sh - helpers shared by the e2e scripts (sourced).

# alive PIDFILE BINPATH: recorded pid is running and is that binary
alive() {
  local pid
  [ -f "$1" ] || return 1
  pid="$(cat "$1")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2 " || return 1
}

# running PID: the process exists and has not exited (a zombie that its
# parent has not reaped yet counts as exited)
running() {
  local st
  st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null)" || return 1
  [ -n "$st" ] && [ "${st:0:1}" != Z ]
}
exited() { ! running "$1"; }

# port_busy HOST PORT: something accepts connections there
port_busy() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# start PIDFILE LOGFILE CMD...: background, own session, record pid; returns
# once the pid runs CMD (or has exited). Until the forked subshell execs,
# its cmdline is this script's, and `alive` would call it dead: on a busy
# machine a check right after start took a live kube-proxy for an exited one.
start() {
  local pidfile="$1" logfile="$2" pid self i; shift 2
  setsid "$@" >"$logfile" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$pidfile"
  self="$(tr '\0' ' ' </proc/$$/cmdline)"
  for ((i = 0; i < 200; i++)); do
    running "$pid" || return 0
    [ "$( { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null)" != "$self" ] && return 0
    sleep 0.05
  done
  echo "start: pid $pid ($1) has not exec'd after 10 s; going on" >&2
}

# wait_until SECONDS WHAT CMD...: run CMD (in this shell: functions work,
# and may `exit` to give up early) until it succeeds, at least once and
# then every $WAIT_STEP seconds (default 0.2). If it has not succeeded
# after SECONDS (a whole number), print one line to stderr,
#   <script>: FAILED: WHAT: not within SECONDS s (WAIT_PROGRESS)
# and return 1: under `set -e` the script stops there; `|| { ...; }` can
# add context first. WHAT says what should have happened; CMD may set
# WAIT_PROGRESS to say how far it got. CMD's own output is not redirected
# (see quiet).
wait_until() {
  local secs="$1" what="$2" deadline
  shift 2
  [[ "$secs" =~ ^[0-9]+$ ]] || { echo "wait_until: SECONDS must be a whole number, got '$secs'" >&2; return 2; }
  deadline=$(( $(date +%s) + secs ))
  WAIT_PROGRESS=""
  until "$@"; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      printf '%s: FAILED: %s: not within %s s%s\n' "${0##*/}" "$what" "$secs" "${WAIT_PROGRESS:+ ($WAIT_PROGRESS)}" >&2
      return 1
    fi
    sleep "${WAIT_STEP:-0.2}"
  done
}

# quiet CMD...: CMD with its stdout and stderr discarded (for wait_until)
quiet() { "$@" >/dev/null 2>&1; }
