#!/bin/sh
# cni-install.sh installs Palisade's chained CNI plugin on a node. The
# agent DaemonSet runs it in its install-cni container (a sidecar that
# starts before the agent); kustomize puts it into the ConfigMap
# palisade-cni-install.
#
# Usage: cni-install.sh install|watch|check|uninstall
#
#   install    copy the agent binary to $CNI_BIN_DIR/palisade-agent, write
#              the plugin $CNI_BIN_DIR/palisade (a two-line wrapper that runs
#              "palisade-agent cni"), and append {"type": "palisade"} to the
#              plugins of the node's active network configuration: the
#              first *.conf, *.conflist or *.json file of $CNI_NET_DIR in
#              byte order, as container runtimes choose it. A single-plugin
#              .conf becomes a .conflist. Idempotent; every file is written
#              to a temporary name and renamed into place.
#   watch      install, then check every $CNI_WATCH_INTERVAL seconds and
#              install again when the primary CNI plugin rewrote its
#              configuration without ours. Exits 0 on SIGTERM and leaves the
#              plugin in place: while the agent restarts, new pods wait
#              (CNI "try again later") instead of starting unenrolled.
#   check      exit 0 when the plugin binary is installed and the active
#              configuration lists the plugin (the sidecar's probes).
#   uninstall  remove the plugin from every configuration of $CNI_NET_DIR
#              and delete both binaries; a running "watch" in the same pod
#              stops re-installing. New pods then start without Palisade.
#
# Environment (the defaults are the paths inside the agent's pod):
#   CNI_BIN_DIR          /host/opt/cni/bin   the node's /opt/cni/bin
#   CNI_NET_DIR          /host/etc/cni/net.d the node's /etc/cni/net.d
#   PALISADE_AGENT_BIN   /usr/local/bin/palisade-agent
#   PALISADE_CNI_SOCKET  /var/run/palisade/cni.sock (the agent's CNI
#                        socket as the node sees it, "agentSocket")
#   CNI_WATCH_INTERVAL   10
#   STATE_DIR            /tmp                heartbeat and uninstall marker
#
# Needs: sh, jq, sha256sum, mv, cp, chmod, rm.
set -eu
export LC_ALL=C

CNI_BIN_DIR=${CNI_BIN_DIR:-/host/opt/cni/bin}
CNI_NET_DIR=${CNI_NET_DIR:-/host/etc/cni/net.d}
PALISADE_AGENT_BIN=${PALISADE_AGENT_BIN:-/usr/local/bin/palisade-agent}
PALISADE_CNI_SOCKET=${PALISADE_CNI_SOCKET:-/var/run/palisade/cni.sock}
CNI_WATCH_INTERVAL=${CNI_WATCH_INTERVAL:-10}
STATE_DIR=${STATE_DIR:-/tmp}

PLUGIN=palisade

log() { echo "cni-install: $*" >&2; }

# active_conf prints the configuration file the runtime uses.
active_conf() {
	for f in "$CNI_NET_DIR"/*; do
		case $f in
		*.conf | *.conflist | *.json)
			if [ -f "$f" ]; then
				echo "$f"
				return 0
			fi
			;;
		esac
	done
	return 1
}

# has_plugin FILE: the file lists our plugin.
has_plugin() {
	jq -e --arg t "$PLUGIN" '(.plugins // [.]) | any(.type == $t)' "$1" >/dev/null 2>&1
}

# replace TMP DEST: rename TMP over DEST unless their contents are equal.
replace() {
	if [ -f "$2" ] && [ "$(sha256sum <"$1")" = "$(sha256sum <"$2")" ]; then
		rm -f "$1"
		return 0
	fi
	chmod "$3" "$1"
	mv -f "$1" "$2"
	log "wrote $2"
}

install_binaries() {
	mkdir -p "$CNI_BIN_DIR"
	cp "$PALISADE_AGENT_BIN" "$CNI_BIN_DIR/.palisade-agent.tmp"
	replace "$CNI_BIN_DIR/.palisade-agent.tmp" "$CNI_BIN_DIR/palisade-agent" 0755
	# The runtime runs plugins without arguments; the agent binary is the
	# plugin only with its "cni" argument. ${0%/*} is the directory the
	# runtime found the plugin in.
	printf '#!/bin/sh\nexec "${0%%/*}/palisade-agent" cni "$@"\n' >"$CNI_BIN_DIR/.$PLUGIN.tmp"
	replace "$CNI_BIN_DIR/.$PLUGIN.tmp" "$CNI_BIN_DIR/$PLUGIN" 0755
}

install_conf() {
	if ! f=$(active_conf); then
		log "no CNI network configuration in $CNI_NET_DIR yet"
		return 1
	fi
	if has_plugin "$f"; then
		return 0
	fi
	tmp="$CNI_NET_DIR/.$PLUGIN-conf.tmp"
	entry=$(jq -cn --arg t "$PLUGIN" --arg s "$PALISADE_CNI_SOCKET" '{type: $t, agentSocket: $s}')
	if jq -e 'has("plugins")' "$f" >/dev/null; then
		jq --argjson e "$entry" '.plugins += [$e]' "$f" >"$tmp"
		dest=$f
	else
		# A single plugin: make it the first of a list.
		jq --argjson e "$entry" '{cniVersion, name, plugins: [del(.cniVersion, .name), $e]}' "$f" >"$tmp"
		dest=${f%.*}.conflist
	fi
	replace "$tmp" "$dest" 0644
	if [ "$dest" != "$f" ]; then
		rm -f "$f"
		log "replaced $f by $dest"
	fi
}

install() {
	install_binaries
	install_conf
}

check() {
	[ -x "$CNI_BIN_DIR/$PLUGIN" ] && [ -x "$CNI_BIN_DIR/palisade-agent" ] || return 1
	f=$(active_conf) || return 1
	has_plugin "$f"
}

uninstall() {
	mkdir -p "$STATE_DIR"
	: >"$STATE_DIR/palisade-cni-uninstalled"
	for f in "$CNI_NET_DIR"/*; do
		case $f in
		*.conf | *.conflist | *.json) ;;
		*) continue ;;
		esac
		[ -f "$f" ] && has_plugin "$f" || continue
		tmp="$CNI_NET_DIR/.$PLUGIN-conf.tmp"
		jq --arg t "$PLUGIN" '.plugins |= map(select(.type != $t))' "$f" >"$tmp"
		replace "$tmp" "$f" 0644
	done
	rm -f "$CNI_BIN_DIR/$PLUGIN" "$CNI_BIN_DIR/palisade-agent"
	log "uninstalled"
}

watch() {
	rm -f "$STATE_DIR/palisade-cni-uninstalled"
	trap 'log "stopping; the plugin stays installed"; exit 0' TERM INT
	until install; do
		sleep 2 &
		wait $! || true
	done
	log "installed"
	while :; do
		: >"$STATE_DIR/palisade-cni-heartbeat"
		sleep "$CNI_WATCH_INTERVAL" &
		wait $! || true
		if [ -e "$STATE_DIR/palisade-cni-uninstalled" ]; then
			continue
		fi
		if ! check; then
			log "plugin missing from the active configuration; installing again"
			install || true
		fi
	done
}

case ${1:-} in
install) install ;;
watch) watch ;;
check) check ;;
uninstall) uninstall ;;
*)
	echo "usage: $0 install|watch|check|uninstall" >&2
	exit 2
	;;
esac
