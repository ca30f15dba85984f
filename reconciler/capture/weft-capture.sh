#!/bin/sh
# weft-capture.sh: transparent capture of a workload's TCP for its Weft sidecar (iptables, nat).
#
# One script for every place a workload runs beside a sidecar: the Kubernetes capture init
# container and `weft up --isolation netns` both run it inside the workload's network namespace.
#
#   weft-capture.sh apply --proxy-uid UID [--capture-port PORT] [--inbound TARGET:LISTEN]...
#                         [--exclude-ports P[,P...]] [--exclude-cidrs CIDR[,CIDR...]]
#   weft-capture.sh cleanup
#
# apply: the app's outbound TCP is redirected to the sidecar's capture listener (WEFT_OUTPUT,
#   from OUTPUT), except the sidecar's own traffic (by UID: otherwise its connections to peers
#   would come back to it), loopback, and the excluded ports and CIDRs. Inbound TCP to each pod
#   port TARGET is redirected to the mTLS listener LISTEN of that port (WEFT_INBOUND, from
#   PREROUTING), so a caller that bypasses its own sidecar still meets this one's policy.
#   Running it again replaces Weft's rules (no duplicates); each chain is swapped atomically
#   by iptables-restore, so there is no moment when capture is off.
# cleanup: removes Weft's chains and the jumps to them; running it when none exist is fine.
#
# IPv4 only: ip6tables is not programmed, so a workload that speaks IPv6 needs its own rules.
# Environment: IPTABLES (default iptables) and IPTABLES_RESTORE (default: ${IPTABLES}-restore).
set -eu

IPTABLES=${IPTABLES:-iptables}
IPTABLES_RESTORE=${IPTABLES_RESTORE:-${IPTABLES}-restore}
OUT_CHAIN=WEFT_OUTPUT
IN_CHAIN=WEFT_INBOUND

die() {
	echo "weft-capture: $*" >&2
	exit 2
}

is_port() {
	case $1 in '' | *[!0-9]*) return 1 ;; esac
	[ "$1" -ge 1 ] && [ "$1" -le 65535 ]
}

ipt() {
	# -w: wait for the xtables lock instead of failing when another tool holds it.
	"$IPTABLES" -w -t nat "$@"
}

# Adds the jump from a built-in chain to ours unless it is already there.
ensure_jump() {
	ipt -C "$1" -p tcp -j "$2" 2>/dev/null || ipt -A "$1" -p tcp -j "$2"
}

remove_jumps() {
	while ipt -C "$1" -p tcp -j "$2" 2>/dev/null; do
		ipt -D "$1" -p tcp -j "$2"
	done
}

apply() {
	uid="" capture=15001 inbound="" ports="" cidrs=""
	while [ $# -gt 0 ]; do
		[ $# -ge 2 ] || die "$1 needs a value"
		case $1 in
		--proxy-uid) uid=$2 ;;
		--capture-port) capture=$2 ;;
		--inbound) inbound="$inbound $2" ;;
		--exclude-ports) ports="$ports $(echo "$2" | tr ',' ' ')" ;;
		--exclude-cidrs) cidrs="$cidrs $(echo "$2" | tr ',' ' ')" ;;
		*) die "unknown option $1" ;;
		esac
		shift 2
	done
	case $uid in '' | *[!0-9]*) die "--proxy-uid must be a numeric UID" ;; esac
	# UID 0 would exempt every root process, the app too if it runs as root: nothing captured.
	[ "$uid" -ne 0 ] || die "--proxy-uid must not be 0"
	is_port "$capture" || die "invalid --capture-port $capture"
	for p in $ports; do is_port "$p" || die "invalid excluded port $p"; done
	for c in $cidrs; do
		case $c in */*) ;; *) die "invalid CIDR $c (write a.b.c.d/len)" ;; esac
	done
	for pair in $inbound; do
		is_port "${pair%%:*}" && is_port "${pair#*:}" || die "invalid --inbound $pair (TARGET:LISTEN)"
	done

	{
		echo "*nat"
		# In --noflush mode, naming a chain creates it or empties it, in the same commit as
		# the rules below.
		echo ":$OUT_CHAIN - [0:0]"
		echo ":$IN_CHAIN - [0:0]"
		echo "-A $OUT_CHAIN -m owner --uid-owner $uid -j RETURN"
		echo "-A $OUT_CHAIN -o lo -j RETURN"
		echo "-A $OUT_CHAIN -d 127.0.0.0/8 -j RETURN"
		for p in $ports; do echo "-A $OUT_CHAIN -p tcp --dport $p -j RETURN"; done
		for c in $cidrs; do echo "-A $OUT_CHAIN -d $c -j RETURN"; done
		echo "-A $OUT_CHAIN -p tcp -j REDIRECT --to-ports $capture"
		for pair in $inbound; do
			echo "-A $IN_CHAIN -p tcp --dport ${pair%%:*} -j REDIRECT --to-ports ${pair#*:}"
		done
		echo "COMMIT"
	} | "$IPTABLES_RESTORE" -w --noflush
	ensure_jump OUTPUT "$OUT_CHAIN"
	ensure_jump PREROUTING "$IN_CHAIN"
}

cleanup() {
	[ $# -eq 0 ] || die "cleanup takes no options"
	remove_jumps OUTPUT "$OUT_CHAIN"
	remove_jumps PREROUTING "$IN_CHAIN"
	for chain in "$OUT_CHAIN" "$IN_CHAIN"; do
		if ipt -n -L "$chain" >/dev/null 2>&1; then
			ipt -F "$chain"
			ipt -X "$chain"
		fi
	done
}

[ $# -ge 1 ] || die "usage: weft-capture.sh apply|cleanup [options]"
mode=$1
shift
case $mode in
apply) apply "$@" ;;
cleanup) cleanup "$@" ;;
*) die "unknown mode $mode (apply or cleanup)" ;;
esac
