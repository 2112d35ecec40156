package policy

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/palisade-net/palisade/pkg/l7"
)

// ruleSet is the merged L7 rule set for one combination of port rules
// (a peer on a port). It is immutable and shared between connections.
type ruleSet struct {
	proto l7.Protocol
	// allowAll: an L3/L4 allow (or the absence of default deny) makes
	// the allow rules moot; only deny rules are checked.
	allowAll bool
	// allowBy attributes allowAll to a port rule (nil: default allow).
	allowBy   *portRule
	http      *httpSet
	httpDeny  *httpSet
	kafka     []*kafkaRule
	kafkaDeny []*kafkaRule
}

func newRuleSet(proto l7.Protocol, allowAll bool, allowBy *portRule, allows, denies []*portRule) *ruleSet {
	rs := &ruleSet{proto: proto, allowAll: allowAll, allowBy: allowBy}
	var h, hd []*httpRule
	var g, gd []*grpcRule
	for _, p := range allows {
		h = append(h, p.http...)
		g = append(g, p.grpc...)
		rs.kafka = append(rs.kafka, p.kafka...)
	}
	for _, p := range denies {
		hd = append(hd, p.http...)
		gd = append(gd, p.grpc...)
		rs.kafkaDeny = append(rs.kafkaDeny, p.kafka...)
	}
	rs.http = newHTTPSet(h, g)
	rs.httpDeny = newHTTPSet(hd, gd)
	return rs
}

// PortRules are the L7 rules that apply to one peer on one port. The
// proxy calls HTTP or Kafka for every request of a connection.
type PortRules struct {
	set  *ruleSet
	peer string
	port uint16
	// denyingBy names the policies whose default deny refuses a request
	// no rule allows; it becomes the verdict's Policy.
	denyingBy string
}

// DefaultDenyRule is the Rule of a verdict that denies a request because
// no rule allows it (the selecting policies' default deny decided).
const DefaultDenyRule = "default-deny"

// defaultDeny is the verdict for a request no rule allows.
func (r *PortRules) defaultDeny(what string) l7.Verdict {
	v := l7.Verdict{Policy: r.denyingBy, Rule: DefaultDenyRule, Reason: fmt.Sprintf("no rule allows %s on port %d for %s", what, r.port, r.peer)}
	if r.denyingBy != "" {
		v.Reason += " (default deny by " + r.denyingBy + ")"
	}
	return v
}

// Protocol returns the parser the port needs.
func (r *PortRules) Protocol() l7.Protocol {
	if r == nil {
		return l7.None
	}
	return r.set.proto
}

const maxReasonPath = 200

func describeHTTP(req *l7.HTTPRequest) string {
	p := req.Path
	if len(p) > maxReasonPath {
		p = p[:maxReasonPath] + "..."
	}
	m := req.Method
	if !httpguts.ValidHeaderFieldName(m) {
		m = strconv.Quote(m)
	}
	return m + " " + strings.ToValidUTF8(p, "?")
}

// HTTP judges one HTTP request (gRPC included): a matching deny rule
// denies; otherwise it is allowed when an L3/L4 allow makes the L7 rules
// moot or when some allow rule matches it.
func (r *PortRules) HTTP(req *l7.HTTPRequest) l7.Verdict {
	if r == nil || r.set.proto != l7.HTTP {
		return l7.Verdict{Reason: fmt.Sprintf("port %d does not carry HTTP rules", r.portOrZero())}
	}
	rs := r.set
	if h, g := rs.httpDeny.first(req); h != nil || g != nil {
		pol, path := attribution(h, g)
		return l7.Verdict{Policy: pol, Rule: path,
			Reason: fmt.Sprintf("%s on port %d for %s matches a deny rule", describeHTTP(req), r.port, r.peer)}
	}
	if rs.allowAll {
		return r.allowAllVerdict()
	}
	v := l7.Verdict{}
	var h *httpRule
	var g *grpcRule
	if rs.http.headerMatches {
		h, g = rs.http.allowAll(req, &v)
	} else {
		h, g = rs.http.first(req)
	}
	if h == nil && g == nil {
		return r.defaultDeny(describeHTTP(req))
	}
	v.Allow = true
	v.Policy, v.Rule = attribution(h, g)
	return v
}

func attribution(h *httpRule, g *grpcRule) (string, string) {
	if h != nil {
		return h.pol.name, h.path
	}
	return g.pol.name, g.path
}

func (r *PortRules) portOrZero() uint16 {
	if r == nil {
		return 0
	}
	return r.port
}

func (r *PortRules) allowAllVerdict() l7.Verdict {
	if p := r.set.allowBy; p != nil {
		return l7.Verdict{Allow: true, Policy: p.pol.name, Rule: p.path}
	}
	return l7.Verdict{Allow: true, Reason: "no policy enables default deny here"}
}

// Kafka judges one Kafka request. A matching deny rule denies. Otherwise
// it is allowed when an L3/L4 allow makes the L7 rules moot, when one
// rule allows it whole (a rule without topic, or a request of a key that
// carries no topics), or when every topic it names is covered by some
// matching rule.
func (r *PortRules) Kafka(req *l7.KafkaRequest) l7.Verdict {
	if r == nil || r.set.proto != l7.Kafka {
		return l7.Verdict{Reason: fmt.Sprintf("port %d does not carry Kafka rules", r.portOrZero())}
	}
	rs := r.set
	api := kafkaAPIName(req.APIKey)
	for _, k := range rs.kafkaDeny {
		if k.denies(req) {
			return l7.Verdict{Policy: k.pol.name, Rule: k.path,
				Reason: fmt.Sprintf("%s%s on port %d for %s matches a deny rule", api, topicsPhrase(req, k.topic), r.port, r.peer)}
		}
	}
	if rs.allowAll {
		return r.allowAllVerdict()
	}
	var covered []bool
	var coveredBy *kafkaRule
	for _, k := range rs.kafka {
		if !k.matchBase(req) {
			continue
		}
		if k.coversWhole(req) {
			return l7.Verdict{Allow: true, Policy: k.pol.name, Rule: k.path}
		}
		if covered == nil {
			covered = make([]bool, len(req.Topics))
		}
		for i, t := range req.Topics {
			if t == k.topic && !covered[i] {
				covered[i] = true
				if coveredBy == nil {
					coveredBy = k
				}
			}
		}
	}
	uncovered := -1
	for i := range req.Topics {
		if covered == nil || !covered[i] {
			uncovered = i
			break
		}
	}
	if uncovered < 0 && coveredBy != nil {
		return l7.Verdict{Allow: true, Policy: coveredBy.pol.name, Rule: coveredBy.path}
	}
	what := fmt.Sprintf("%s v%d", api, req.APIVersion)
	switch {
	case uncovered >= 0 && req.Topics[uncovered] == "":
		what += " to all topics (or a topic the proxy could not resolve)"
	case uncovered >= 0:
		what += " to topic " + strconv.Quote(req.Topics[uncovered])
	}
	if req.ClientID != "" {
		what += " from client id " + strconv.Quote(req.ClientID)
	}
	return r.defaultDeny(what)
}

func topicsPhrase(req *l7.KafkaRequest, topic string) string {
	if topic == "" || len(req.Topics) == 0 {
		return ""
	}
	return " to topic " + strconv.Quote(topic)
}
