# e2e/kube/lib.sh - process helpers shared by up.sh and node-up.sh (sourced).

# alive PIDFILE BINPATH: recorded pid is running and is that binary
alive() {
  local pid
  [ -f "$1" ] || return 1
  pid="$(cat "$1")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2 " || return 1
}

# port_busy HOST PORT: something accepts connections there
port_busy() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# start PIDFILE LOGFILE CMD...: background, own session, record pid
start() {
  local pidfile="$1" logfile="$2"; shift 2
  setsid "$@" >"$logfile" 2>&1 </dev/null &
  echo $! >"$pidfile"
}
