#!/usr/bin/env bash
# Start a one-node SLURM (munge, slurmctld, slurmd) on this machine, for tests/test_slurm.py and CI; idempotent:
# a second call with the daemons up only checks them. Needs root and Debian's packages:
#   apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
# Writes /etc/slurm/slurm.conf from slurm.conf.in (never over a slurm.conf it did not write), state and logs
# under /var/lib/kdsum-slurm. Exit 0 once `sinfo` shows the node idle; else prints why and exits 1.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
state=/var/lib/kdsum-slurm
conf=/etc/slurm/slurm.conf

for bin in munged slurmctld slurmd sinfo; do
  command -v "$bin" >/dev/null || { echo "start.sh: $bin not found (apt-get install slurmctld slurmd slurm-client munge)"; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "start.sh: needs root (it starts munged, slurmctld and slurmd)"; exit 1; }

node_up() { sinfo -h -n localhost -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; }

# The node as slurmd sees it (its CPUs and memory), less 5% memory so a job's --mem never exceeds what is there.
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.95}' /proc/meminfo)
mkdir -p "$state/ctld" "$state/d" /etc/slurm
if [ -e "$conf" ] && ! grep -q '^# kdsum-ci:' "$conf"; then
  echo "start.sh: $conf exists and was not written by this script; not touching it"; exit 1
fi
sed -e "s|@STATE@|$state|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEM_MB@|$mem_mb|g" "$here/slurm.conf.in" > "$conf.tmp"
if cmp -s "$conf.tmp" "$conf"; then rm "$conf.tmp"; else mv "$conf.tmp" "$conf"; changed=1; fi
if node_up; then
  # up already: a changed template reaches the running daemons without a restart
  if [ -n "${changed:-}" ]; then scontrol reconfigure; echo "start.sh: SLURM up, configuration reloaded"; else echo "start.sh: SLURM already up"; fi
  exit 0
fi

# munge: its key comes with the package; it runs as its own user.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  [ -s /etc/munge/munge.key ] || { /usr/sbin/mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f; }
  chown -R munge:munge /etc/munge
  mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
fi

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd -N localhost

for _ in $(seq 30); do
  if node_up; then echo "start.sh: SLURM up ($cpus CPUs, $mem_mb MB on node localhost)"; exit 0; fi
  scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "start.sh: the node did not come up; sinfo says: $(sinfo -h -N -o '%N %T %E' 2>&1)"
tail -5 "$state/slurmctld.log" "$state/slurmd.log" 2>/dev/null || true
exit 1
