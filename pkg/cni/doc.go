// Package cni is Palisade's chained CNI plugin and the agent's end of it.
//
// The container runtime runs the plugin (the agent binary's "cni"
// subcommand, installed under the plugin name "palisade") after the
// cluster's interface plugin, for every pod sandbox on the node. The plugin
// tells the node agent about the pod, and the agent enrolls it (redirect
// rules inside the pod's netns, handoff to the node proxy) before ADD
// returns: the pod's containers start only after that, so their first packet
// is already captured.
//
// # Network configuration
//
// In the runtime's conflist, after the interface plugin:
//
//	{
//	  "type": "palisade",
//	  "agentSocket": "/var/run/palisade/cni.sock",  // optional, this is the default
//	  "agentTimeout": "30s",                        // optional, Go duration, default 30s
//	  "logLevel": "warn"                            // optional: debug, info, warn, error
//	}
//
// The runtime adds "cniVersion", "name" and "prevResult". Supported CNI
// versions are 0.4.0, 1.0.0 and 1.1.0.
//
// # Commands
//
//   - ADD posts the pod (namespace, name and uid from CNI_ARGS, the netns
//     path, the IPs of prevResult's in-sandbox interfaces) to the agent and
//     waits for its answer. If the agent reports an error, ADD fails with that
//     message; if the agent cannot be reached or does not answer in time, ADD
//     fails with "try again later" (code 11), because letting an enrollable
//     pod start uncaptured would send its first connections in plaintext.
//     Otherwise it prints prevResult unchanged. Sandboxes without
//     K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS are not Kubernetes pods and
//     pass through untouched. A CNI_NETNS that is the plugin's own (host)
//     namespace is refused.
//   - DEL posts the pod to the agent and always succeeds: an unreachable or
//     failing agent is logged to stderr only, since DEL must be idempotent
//     and the agent also reconciles deleted pods from the API server.
//   - CHECK, GC and STATUS succeed.
//   - VERSION reports the supported versions.
//
// # Agent API
//
// The agent serves HTTP/1.1 on a unix socket (mode 0600):
//
//	POST /v1/cni/add   body: PodEvent   → 200 {"status":"ok"} | 4xx/5xx {"error":"…"}
//	POST /v1/cni/del   body: PodEvent   → same
//	GET  /readyz                        → 200 {"status":"ready"} | 503 {"error":"…"}
//	GET  /debug/…                       → ServerOptions.Debug (the agent's
//	                                      /debug/drops), 404 without it
//
// Request bodies are limited in size. Server calls a Handler for add and
// del; the handler's error text is what the plugin reports to the runtime,
// and so what `kubectl describe pod` shows. Listen (or NewServer and Start)
// serves it in the background until Close; ListenAndServe and Serve block
// until their context ends.
package cni
