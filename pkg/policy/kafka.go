package policy

import (
	"regexp"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/palisade-net/palisade/pkg/l7"
)

// kafkaRule is a compiled Kafka rule: all set fields must match.
type kafkaRule struct {
	pol      *policy
	path     string
	keys     []int16 // nil: any key
	version  int16   // -1: any
	clientID string
	anyCID   bool
	topic    string // "": any
}

// kafkaInput is a Kafka rule as written, in either API.
type kafkaInput struct {
	role, apiKey, apiVersion, clientID, topic string
}

var kafkaTopicRE = regexp.MustCompile(`^[a-zA-Z0-9._-]+$`)

// maxKafkaTopicLen is Cilium's limit (older Kafka allowed 255).
const maxKafkaTopicLen = 255

func compileKafka(ps *problems, p *field.Path, in kafkaInput, pol *policy) *kafkaRule {
	r := &kafkaRule{pol: pol, path: p.String(), version: -1, clientID: in.clientID, anyCID: in.clientID == "", topic: in.topic}
	ok := true
	if in.role != "" && in.apiKey != "" {
		ps.errorf(p, "role and apiKey are exclusive: set one of them")
		ok = false
	}
	switch strings.ToLower(in.role) {
	case "":
	case "produce":
		r.keys = kafkaProduceKeys
	case "consume":
		r.keys = kafkaConsumeKeys
	default:
		ps.errorf(p.Child("role"), "%q: want produce or consume", in.role)
		ok = false
	}
	if in.apiKey != "" {
		k, found := ParseKafkaAPIKey(in.apiKey)
		if !found {
			ps.errorf(p.Child("apiKey"), "%q is not a Kafka API key name (produce, fetch, metadata, ...) or number", in.apiKey)
			ok = false
		}
		r.keys = []int16{k}
	}
	if in.apiVersion != "" {
		n, err := strconv.ParseInt(in.apiVersion, 10, 16)
		if err != nil || n < 0 {
			ps.errorf(p.Child("apiVersion"), "%q: want a version number 0-32767", in.apiVersion)
			ok = false
		}
		r.version = int16(n)
	}
	if in.topic != "" {
		if len(in.topic) > maxKafkaTopicLen {
			ps.errorf(p.Child("topic"), "topic is %d characters long; at most %d", len(in.topic), maxKafkaTopicLen)
			ok = false
		} else if !kafkaTopicRE.MatchString(in.topic) {
			ps.errorf(p.Child("topic"), "%q: topic names use only a-z, A-Z, 0-9, '.', '_' and '-'", in.topic)
			ok = false
		}
	}
	if !ok {
		return nil
	}
	return r
}

// matchBase reports whether key, version and client id match.
func (r *kafkaRule) matchBase(req *l7.KafkaRequest) bool {
	if r.keys != nil && !slices.Contains(r.keys, req.APIKey) {
		return false
	}
	if r.version >= 0 && r.version != req.APIVersion {
		return false
	}
	return r.anyCID || r.clientID == req.ClientID
}

// coversWhole reports whether the rule allows the request as a whole,
// whatever topics it names: the rule has no topic, or the request names no
// topic (Heartbeat, JoinGroup, a brokers-only Metadata, ...). Requests for
// all topics name the topic "" (l7.KafkaRequest), which no topic rule
// covers, so they need a rule without topic.
func (r *kafkaRule) coversWhole(req *l7.KafkaRequest) bool {
	return r.topic == "" || len(req.Topics) == 0
}

// denies reports whether a deny rule matches the request: base fields
// match and the rule names no topic, or names one of the request's topics,
// or the request names "" (all topics, or one the inspector could not
// resolve, which may be the denied one).
func (r *kafkaRule) denies(req *l7.KafkaRequest) bool {
	if !r.matchBase(req) {
		return false
	}
	if r.topic == "" {
		return true
	}
	return slices.Contains(req.Topics, r.topic) || slices.Contains(req.Topics, "")
}
