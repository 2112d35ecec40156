// Package policy is Palisade's policy engine: it decodes and validates
// L7Policy / ClusterL7Policy (policy.palisade.dev/v1alpha1) and
// CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy (cilium.io/v2),
// compiles them into an immutable Set, and decides connections (Ingress,
// Egress) and requests (PortRules.HTTP, PortRules.Kafka).
//
// # Semantics
//
// They follow Cilium's, checked against Cilium's source:
//
//   - A policy selects pods with its endpointSelector; in a namespaced
//     policy only pods of its namespace. Selector keys may carry Cilium's
//     "k8s:" or "any:" prefix; io.kubernetes.pod.namespace is the pod's
//     namespace, io.cilium.k8s.namespace.labels.<key> its namespace's
//     labels and io.cilium.k8s.policy.serviceaccount its service account.
//   - No policy selects a pod in a direction: everything is allowed. Once a
//     selecting policy has rules for a direction (or sets
//     enableDefaultDeny), the direction is default deny: only what some
//     allow rule allows passes. Allows are a union over rules, port rules
//     and policies. Without default deny (enableDefaultDeny false on every
//     selecting policy) allow rules are moot and only deny rules apply.
//   - Peers: fromEndpoints/toEndpoints match pods only; in a namespaced
//     policy a selector without a namespace key (and without namespace
//     label keys) only matches pods of the policy's namespace; in a
//     cluster-wide policy, pods of any namespace. fromCIDR/fromCIDRSet
//     match peers outside the cluster only. Entities: all, world,
//     world-ipv4, world-ipv6, cluster, none. Palisade adds fromPrincipals
//     (SPIFFE IDs: exact, "prefix/*", "spiffe://td/*", "*"; authenticated
//     peers only), fromServiceAccounts and fromNamespaces, and their to*
//     forms. One kind of peer field per rule, as Cilium requires; the
//     entries of that field are alternatives. An explicitly empty list
//     (fromEndpoints: []) matches no peer.
//   - A rule with peers and no toPorts applies to every port; a rule with
//     toPorts and no peers to every peer; a rule with neither (ingress:
//     [{}]) matches nothing and only turns default deny on.
//   - Deny rules beat every allow. A deny rule without L7 rules refuses the
//     connection (L4). Palisade's deny rules may carry L7 rules: a request
//     that matches one is denied whatever the allows say, so such a port
//     is inspected even where an L3/L4 allow makes the L7 allow rules moot.
//   - An L3/L4-only allow for the same peer and port makes that port's L7
//     allow rules moot (as Cilium duplicates L3-only rules into wildcard
//     L7 rules).
//   - HTTP: method, path (query included) and host are RE2 expressions
//     matched against the whole value; empty means any. headers are "Name
//     value" (exact) or "Name" (presence); several values of a header are
//     compared joined with ",". headerMatches without a mismatch action
//     must match; with LOG, ADD, DELETE or REPLACE the rule still matches
//     and the action is returned in the verdict (Edits, Logs). When rules
//     have headerMatches, every matching rule contributes its actions, in
//     order, as Cilium's proxy applies them all. Fields of a rule are
//     ANDed, rules ORed.
//   - gRPC rules ({service, method}, empty = any) match only requests for
//     which l7.HTTPRequest.GRPC reports a gRPC call; http rules match gRPC
//     calls too (POST /package.Service/Method).
//   - Kafka: role produce = keys {0, 3, 18}, consume = {1, 2, 3, 8, 9, 10,
//     11, 12, 13, 14, 18}; apiKey by name or number; apiVersion, clientID
//     and topic exact. A rule's topic only constrains the topics a request
//     names: a request naming none (Heartbeat, JoinGroup, a brokers-only
//     Metadata) matches on key, version and client id alone. Requests for
//     all topics (Metadata, OffsetFetch with null topics) or naming topics
//     by an id the inspector cannot resolve name the topic "" (see
//     l7.KafkaRequest), which no topic rule covers and every topic deny
//     rule matches. Cilium's matcher cannot tell "no topics" from "all
//     topics" and denies both under a topic rule; Palisade's inspector
//     can, so brokers-only Metadata passes. A request naming several
//     topics is allowed when one rule without topic matches it or every
//     topic is covered by some matching rule; the denial names the first
//     uncovered topic.
//   - Protocol conflicts (http or grpc rules and kafka rules for the same
//     peer and port) deny that peer on that port with a reason.
//
// # Problems
//
// Validation names the offending field. Errors reject an object (it then
// only enforces default deny, so a broken policy fails closed); warnings
// name parts of Cilium policies Palisade cannot honour (toFQDNs,
// toServices, DNS and generic L7 rules, TLS interception, host entities,
// headerMatches secrets, ...), which then allow nothing. Unsupported parts
// of deny rules are errors, since dropping them would allow more.
//
// # Performance
//
// Regular expressions are compiled once; literal expressions are compared
// as strings; results for the standard methods are precomputed; HTTP rules
// are indexed by the literal prefix of their path expression, so a request
// only tries the rules whose prefix it starts with. The merged rule set of
// each combination of port rules is built once per Set and shared.
package policy
