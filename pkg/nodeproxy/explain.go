package nodeproxy

import (
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/policy"
	"github.com/palisade-net/palisade/pkg/workload"
)

// Explanation answers GET /explain: which policies select a pod and what a
// connection to one of its ports (and a request on it) would get from
// this proxy's current policy.
type Explanation struct {
	Node string `json:"node"`
	Pod  string `json:"pod"`
	Port uint16 `json:"port"`
	// Enrolled and Mode describe the pod as policy sees it.
	Enrolled bool   `json:"enrolled"`
	Mode     string `json:"mode,omitempty"`
	Identity string `json:"identity,omitempty"`
	// Policies select the pod, with their rules, per direction.
	Policies policy.Explanation `json:"policies"`
	// From describes the client the verdicts are for.
	From string `json:"from"`
	// Connection is the ingress verdict of a connection from From.
	Connection Verdict `json:"connection"`
	// Request is the verdict of the given request, when one was given.
	Request *Verdict `json:"request,omitempty"`
}

// Verdict is a decision as the admin API shows it.
type Verdict struct {
	Allowed bool   `json:"allowed"`
	Policy  string `json:"policy,omitempty"`
	Rule    string `json:"rule,omitempty"`
	Reason  string `json:"reason,omitempty"`
	// Protocol is the parser the port needs (http, kafka), for connections.
	Protocol string `json:"protocol,omitempty"`
	// Request describes the judged request.
	Request string `json:"request,omitempty"`
}

func verdictOf(v l7.Verdict) Verdict {
	return Verdict{Allowed: v.Allow, Policy: v.Policy, Rule: v.Rule, Reason: v.Reason}
}

// Explain evaluates the query of GET /explain:
//
//	pod=NS/NAME port=N                      the destination (required)
//	from=NS/NAME | fromIdentity=SPIFFE-ID   the client (default: a client
//	                                        outside the cluster)
//	method=GET path=/x host=h               an HTTP request, or
//	grpc=package.Service/Method             a gRPC call, or
//	kafkaApi=Produce topic=t clientId=c     a Kafka request (API name or key)
func (p *Proxy) Explain(q url.Values) (*Explanation, error) {
	ix := p.index.Load()
	dst, err := findPod(ix, q.Get("pod"))
	if err != nil {
		return nil, fmt.Errorf("pod: %w", err)
	}
	port, err := strconv.ParseUint(q.Get("port"), 10, 16)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("port: %q is not a port number", q.Get("port"))
	}
	if len(dst.IPs) == 0 {
		return nil, fmt.Errorf("pod %s has no IP yet", dst.Key())
	}
	dstID, err := dst.Identity(p.cfg.TrustDomain)
	if err != nil {
		return nil, err
	}
	out := &Explanation{Node: p.cfg.Node, Pod: dst.Key(), Port: uint16(port), Enrolled: dst.Enrolled,
		Mode: string(dst.Mode), Identity: dstID.String(), From: "a client outside the cluster"}
	dstEP := p.localEndpoint(dst, dstID, dst.IPs[0])
	set := p.policy.Load()
	out.Policies = set.Explain(dstEP)

	var src policy.Endpoint
	switch {
	case q.Get("from") != "":
		w, err := findPod(ix, q.Get("from"))
		if err != nil {
			return nil, fmt.Errorf("from: %w", err)
		}
		src = p.localEndpoint(w, spiffeid.ID{}, firstIP(w))
		if w.Enrolled {
			if id, err := w.Identity(p.cfg.TrustDomain); err == nil {
				src.Identity = id
			}
		}
		out.From = w.Key()
	case q.Get("fromIdentity") != "":
		id, err := spiffeid.FromString(q.Get("fromIdentity"))
		if err != nil {
			return nil, fmt.Errorf("fromIdentity: %w", err)
		}
		src = policy.Endpoint{Identity: id, InCluster: true}
		if ns, sa, ok := identityParts(id); ok {
			src.Namespace, src.ServiceAccount = ns, sa
		}
		out.From = id.String()
	}
	d := set.Ingress(src, dstEP, uint16(port))
	out.Connection = verdictOf(d.Verdict)
	out.Connection.Protocol = string(d.Protocol)

	req, err := explainRequest(q)
	if err != nil || req == nil {
		return out, err
	}
	var v Verdict
	switch {
	case !d.Allow:
		v = verdictOf(d.Verdict)
		v.Reason = "the connection itself is refused: " + d.Reason
	case d.Rules == nil:
		v = verdictOf(d.Verdict)
		v.Reason = "no L7 rules on this port: every request of an allowed connection passes"
	case req.http != nil:
		v = verdictOf(d.Rules.HTTP(req.http))
	case req.kafka != nil:
		v = verdictOf(d.Rules.Kafka(req.kafka))
	}
	v.Request = req.describe()
	out.Request = &v
	return out, nil
}

type explainReq struct {
	http  *l7.HTTPRequest
	kafka *l7.KafkaRequest
}

func (r *explainReq) describe() string {
	if r.kafka != nil {
		return fmt.Sprintf("kafka api %d topics %v client %q", r.kafka.APIKey, r.kafka.Topics, r.kafka.ClientID)
	}
	if svc, m, ok := r.http.GRPC(); ok {
		return "grpc " + svc + "/" + m
	}
	return "http " + r.http.Method + " " + r.http.Path
}

// explainRequest reads the request part of an /explain query; nil when
// none is given.
func explainRequest(q url.Values) (*explainReq, error) {
	switch {
	case q.Get("grpc") != "":
		svc, m, ok := strings.Cut(strings.TrimPrefix(q.Get("grpc"), "/"), "/")
		if !ok || svc == "" || m == "" {
			return nil, fmt.Errorf("grpc: %q is not package.Service/Method", q.Get("grpc"))
		}
		return &explainReq{http: &l7.HTTPRequest{Method: http.MethodPost, Path: "/" + svc + "/" + m, Host: q.Get("host"),
			Header: http.Header{"Content-Type": {"application/grpc"}}}}, nil
	case q.Get("kafkaApi") != "":
		key, ok := policy.ParseKafkaAPIKey(q.Get("kafkaApi"))
		if !ok {
			return nil, fmt.Errorf("kafkaApi: %q is not a Kafka API name or key", q.Get("kafkaApi"))
		}
		r := &l7.KafkaRequest{APIKey: key, ClientID: q.Get("clientId")}
		if v := q.Get("kafkaVersion"); v != "" {
			n, err := strconv.ParseInt(v, 10, 16)
			if err != nil {
				return nil, fmt.Errorf("kafkaVersion: %w", err)
			}
			r.APIVersion = int16(n)
		}
		r.Topics = q["topic"]
		return &explainReq{kafka: r}, nil
	case q.Get("method") != "" || q.Get("path") != "":
		m := q.Get("method")
		if m == "" {
			m = http.MethodGet
		}
		path := q.Get("path")
		if path == "" {
			path = "/"
		}
		h := http.Header{}
		for _, kv := range q["header"] {
			k, v, _ := strings.Cut(kv, ":")
			h.Add(strings.TrimSpace(k), strings.TrimSpace(v))
		}
		return &explainReq{http: &l7.HTTPRequest{Method: m, Path: path, Host: q.Get("host"), Header: h}}, nil
	}
	return nil, nil
}

// findPod finds a pod of the index by "namespace/name".
func findPod(ix *workload.Index, key string) (*workload.Workload, error) {
	if !strings.Contains(key, "/") {
		return nil, fmt.Errorf("%q: want namespace/name", key)
	}
	for _, w := range ix.Workloads() {
		if w.Key() == key {
			return w, nil
		}
	}
	return nil, fmt.Errorf("no pod %s in this node proxy's cluster view", key)
}

func firstIP(w *workload.Workload) netip.Addr {
	if len(w.IPs) > 0 {
		return w.IPs[0]
	}
	return netip.Addr{}
}
