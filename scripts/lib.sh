# shellcheck shell=bash
# Helpers shared by the scripts in scripts/. Source it: . "$(dirname "$0")/lib.sh"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Absolute path of the repository (the parent of this scripts/ folder).
repo_root() { (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P); }

# Replace the password of a URL with ****:
#   postgresql://user:secret@host/db -> postgresql://user:****@host/db
#   ...?password=secret               -> ...?password=****
mask_url() {
  printf '%s\n' "$1" | sed -E \
    -e 's#^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*):[^@/]*@#\1:****@#' \
    -e 's#([?&]password=)[^&]*#\1****#g'
}

# port_is_free PORT: true if nothing listens on 127.0.0.1:PORT (or 0.0.0.0:PORT)
# and a server could bind it.
port_is_free() {
  local port=$1
  if command -v python3 >/dev/null 2>&1; then
    python3 - "$port" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
  elif command -v ss >/dev/null 2>&1; then
    [ -z "$(ss -Htan "( sport = :$port )" 2>/dev/null | grep -v TIME-WAIT)" ]
  else
    ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
  fi
}

# free_port [EXCLUDED_PORT...]: print a free TCP port on 127.0.0.1.
# Picks at random below the kernel's ephemeral range (32768+) so that outgoing
# connections never grab a port we mean to reuse later.
free_port() {
  local port i x
  for ((i = 0; i < 200; i++)); do
    port=$((20000 + RANDOM % 12000))
    for x in "$@"; do [ "$x" = "$port" ] && continue 2; done
    if port_is_free "$port"; then echo "$port"; return 0; fi
  done
  echo "free_port: no free port found" >&2
  return 1
}

# wait_for TIMEOUT_SECONDS DESCRIPTION CMD [ARGS...]: run CMD every 0.1 s until
# it succeeds; fail if it has not after TIMEOUT_SECONDS.
wait_for() {
  local timeout=$1 what=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "timed out after ${timeout}s waiting for $what" >&2
      return 1
    fi
    sleep 0.1
  done
}
