package kafka

import (
	"bytes"
	"encoding/binary"
	"math"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestTableCoversKmsg: every key kmsg knows has an entry and no entry
// exists for a key kmsg does not know.
func TestTableCoversKmsg(t *testing.T) {
	known := 0
	for k := 0; k <= math.MaxInt16; k++ {
		key := int16(k)
		_, ok := lookupAPI(key)
		if req := kmsg.RequestForKey(key); (req != nil) != ok {
			t.Errorf("key %d (%s): kmsg knows it %v, table has it %v", key, kmsg.NameForKey(key), req != nil, ok)
		}
		if ok {
			known++
		}
	}
	if _, ok := lookupAPI(-1); ok {
		t.Error("negative key found")
	}
	if known < 90 {
		t.Fatalf("only %d keys known", known)
	}
}

// forEachKeyVersion runs fn for every key and version kmsg knows.
func forEachKeyVersion(t *testing.T, fn func(t *testing.T, key, version int16)) {
	for k := int16(0); int(k) < len(apis); k++ {
		req := kmsg.RequestForKey(k)
		if req == nil {
			continue
		}
		for v := int16(0); v <= req.MaxVersion(); v++ {
			t.Run(kmsg.NameForKey(k)+"/v"+itoa(v), func(t *testing.T) { fn(t, k, v) })
		}
	}
}

func itoa(v int16) string { return strconv.Itoa(int(v)) }

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestTopicsEveryKey: for every key and version, the table's topics of a
// filled request are exactly those an independent reflective reading
// finds (topic names, ids resolved through the connection's ids, TOPIC
// config and ACL resources, subscriptions, "" for regexes).
func TestTopicsEveryKey(t *testing.T) {
	forEachKeyVersion(t, func(t *testing.T, key, version int16) {
		f := newFiller()
		req, _ := f.filledRequest(t, key, version)
		st := f.state()
		ts := topicSet{st: st}
		a, _ := lookupAPI(key)
		if a.topics != nil {
			a.topics(req, &ts)
		}
		want := map[string]bool{}
		findTopics(reflect.ValueOf(req).Elem(), st.topicName, want)
		got := map[string]bool{}
		for _, n := range ts.names {
			if got[n] {
				t.Errorf("topic %q reported twice", n)
			}
			got[n] = true
		}
		if !slices.Equal(sortedKeys(got), sortedKeys(want)) {
			t.Errorf("topics = %q, want %q", sortedKeys(got), sortedKeys(want))
		}
	})
}

// clusterKeys are the inter-broker and KRaft requests whose topic entries
// carry CLUSTER_AUTHORIZATION_FAILED.
var clusterKeys = map[kmsg.Key]bool{
	kmsg.LeaderAndISR: true, kmsg.StopReplica: true, kmsg.UpdateMetadata: true, kmsg.ControlledShutdown: true,
	kmsg.WriteTxnMarkers: true, kmsg.Vote: true, kmsg.BeginQuorumEpoch: true, kmsg.EndQuorumEpoch: true,
	kmsg.DescribeQuorum: true, kmsg.AlterPartition: true, kmsg.FetchSnapshot: true, kmsg.AssignReplicasToDirs: true,
	kmsg.InitializeShareGroupState: true, kmsg.ReadShareGroupState: true, kmsg.WriteShareGroupState: true,
	kmsg.DeleteShareGroupState: true, kmsg.ReadShareGroupStateSummary: true,
}

// noTopicEcho are keys whose responses have no place for the request's
// topics.
var noTopicEcho = map[kmsg.Key]bool{
	kmsg.UpdateMetadata: true, kmsg.DescribeACLs: true, kmsg.CreateACLs: true, kmsg.DeleteACLs: true,
	kmsg.DescribeLogDirs: true, kmsg.ListPartitionReassignments: true, kmsg.ConsumerGroupHeartbeat: true,
	kmsg.ShareGroupHeartbeat: true, kmsg.StreamsGroupHeartbeat: true, kmsg.StreamsGroupTopologyDescriptionUpdate: true,
}

// wantCode is, written out by hand from the rules, the code the
// denial of a filled request of each key is recorded with and carries in
// every entry that is neither a topic/partition nor a config resource:
// T topics, G groups, C cluster-level, X transactional ids.
var wantCode = func() map[int16]int16 {
	const T, G, C, X = codeTopicAuth, codeGroupAuth, codeClusterAuth, codeTxnAuth
	codes := []int16{
		T, T, T, T, C, C, C, C, T, T, // 0-9
		G, G, G, G, G, G, C, C, C, T, // 10-19
		T, T, X, T, T, X, X, C, T, C, // 20-29
		C, C, T, T, T, C, C, T, C, C, // 30-39
		C, C, G, T, T, T, T, T, C, C, // 40-49
		C, C, C, C, C, C, C, C, C, C, // 50-59
		C, T, C, C, C, X, C, C, G, G, // 60-69
		C, C, C, C, C, T, G, G, T, T, // 70-79
		C, C, C, C, C, C, C, C, G, G, // 80-89
		T, T, T, G, C, // 90-94
	}
	m := map[int16]int16{}
	for k, c := range codes {
		m[int16(k)] = c
	}
	return m
}()

// authCodes are the codes a denial may carry.
var authCodes = map[int16]bool{codeTopicAuth: true, codeGroupAuth: true, codeClusterAuth: true, codeTxnAuth: true}

// decodeDenial parses a denial frame for a request of key and version and
// checks the framing: size, correlation id, header, and that the body
// decodes and re-encodes to the very same bytes.
func decodeDenial(t *testing.T, frame []byte, key, version int16, corr int32) kmsg.Response {
	t.Helper()
	if got := int(binary.BigEndian.Uint32(frame)); got != len(frame)-4 {
		t.Fatalf("size prefix %d, frame has %d bytes after it", got, len(frame)-4)
	}
	if got := int32(binary.BigEndian.Uint32(frame[4:])); got != corr {
		t.Fatalf("correlation id %d, want %d", got, corr)
	}
	req := kmsg.RequestForKey(key)
	req.SetVersion(version)
	body := frame[8:]
	if req.IsFlexible() && key != int16(kmsg.ApiVersions) {
		if body[0] != 0 {
			t.Fatalf("flexible response header has tags byte %d", body[0])
		}
		body = body[1:]
	}
	resp := kmsg.ResponseForKey(key)
	resp.SetVersion(version)
	if err := resp.ReadFrom(body); err != nil {
		t.Fatalf("response does not decode: %v", err)
	}
	if again := resp.AppendTo(nil); !bytes.Equal(again, body) {
		t.Fatalf("response does not round-trip: %d bytes in, %d re-encoded", len(body), len(again))
	}
	return resp
}

// errorCodes walks a decoded response and reports every ErrorCode field
// with its path and whether entries below it carry a nonzero code.
type codeSite struct {
	path       string
	code       int16
	field      reflect.Value
	childCodes bool // some entry below carries a nonzero code
	topicEntry bool // the struct names a topic (or a partition of one)
	configType int64
}

func errorCodes(v reflect.Value, path string, inTopic bool, out *[]codeSite) (anyNonzero bool) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			return errorCodes(v.Elem(), path, inTopic, out)
		}
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			if errorCodes(v.Index(i), path+"[]", inTopic, out) {
				anyNonzero = true
			}
		}
	case reflect.Struct:
		t := v.Type()
		if f := v.FieldByName("Topic"); f.IsValid() {
			inTopic = true
		}
		if f := v.FieldByName("TopicID"); f.IsValid() {
			inTopic = true
		}
		children := false
		for i := 0; i < t.NumField(); i++ {
			sf := t.Field(i)
			if sf.IsExported() && sf.Name != "UnknownTags" && (sf.Type.Kind() == reflect.Slice || sf.Type.Kind() == reflect.Pointer || sf.Type.Kind() == reflect.Struct) {
				if errorCodes(v.Field(i), path+"."+sf.Name, inTopic, out) {
					children = true
				}
			}
		}
		if f := v.FieldByName("ErrorCode"); f.IsValid() {
			site := codeSite{path: path + ".ErrorCode", code: int16(f.Int()), field: f, childCodes: children, topicEntry: inTopic}
			if rt := v.FieldByName("ResourceType"); rt.IsValid() {
				site.configType = rt.Int()
			}
			*out = append(*out, site)
			if f.Int() != 0 {
				anyNonzero = true
			}
		}
		if children {
			anyNonzero = true
		}
	}
	return anyNonzero
}

// responseTopics collects the topic names (ids resolved) a response
// echoes.
func responseTopics(resp kmsg.Response, resolve func([16]byte) string) map[string]bool {
	out := map[string]bool{}
	findTopics(reflect.ValueOf(resp).Elem(), resolve, out)
	return out
}

// TestEveryKeyDenies: for every key and version, the denial of a filled
// request is a well-formed response of that key and version (framing,
// correlation id, header, exact round trip) with an authorization error
// in every entry, the right code per entry kind, and the request's topics
// echoed.
func TestEveryKeyDenies(t *testing.T) {
	forEachKeyVersion(t, func(t *testing.T, key, version int16) {
		f := newFiller()
		req, _ := f.filledRequest(t, key, version)
		st := f.state()
		a, _ := lookupAPI(key)
		const corr = 0x0badcafe
		d := &denial{msg: kmsg.StringPtr("palisade: test")}
		if key == int16(kmsg.Metadata) {
			d.meta = kmsg.NewPtrMetadataResponse()
			b := kmsg.NewMetadataResponseBroker()
			b.NodeID, b.Host, b.Port = 7, "broker.example", 9092
			d.meta.Brokers = []kmsg.MetadataResponseBroker{b}
		}
		resp := req.ResponseKind()
		code := a.deny(req, resp, d)
		if want, ok := wantCode[key]; !ok || code != want {
			t.Errorf("recorded code %d, want %d", code, want)
		}
		got := decodeDenial(t, appendResponse(nil, corr, resp), key, version, corr)

		var sites []codeSite
		errorCodes(reflect.ValueOf(got).Elem(), "", false, &sites)
		if len(sites) == 0 {
			t.Fatalf("response has no ErrorCode at all")
		}
		encoded := got.AppendTo(nil)
		exists := func(f reflect.Value) bool { // does the field exist at this version?
			old := f.Int()
			f.SetInt(99)
			defer f.SetInt(old)
			return !bytes.Equal(got.AppendTo(nil), encoded)
		}
		carried := false
		for _, s := range sites {
			if !exists(s.field) {
				continue
			}
			switch {
			case s.code == 0 && s.childCodes:
				// Entries below carry the error.
			case s.code == 0:
				t.Errorf("%s is 0 and nothing below carries the error", s.path)
			case !authCodes[s.code]:
				t.Errorf("%s = %d, not an authorization code", s.path, s.code)
			default:
				carried = true
			}
			if s.code != 0 && s.topicEntry && s.configType == 0 {
				want := codeTopicAuth
				if clusterKeys[kmsg.Key(key)] {
					want = codeClusterAuth
				}
				if s.code != want {
					t.Errorf("topic entry %s = %d, want %d", s.path, s.code, want)
				}
			}
			if s.configType != 0 && s.code != configCode(kmsg.ConfigResourceType(s.configType)) {
				t.Errorf("config resource %s of type %d = %d", s.path, s.configType, s.code)
			}
			if s.code != 0 && !s.topicEntry && s.configType == 0 && s.code != wantCode[key] {
				t.Errorf("%s = %d, want %d", s.path, s.code, wantCode[key])
			}
		}
		// DescribeLogDirs before v3 has no error field outside the log
		// dirs, and a denial lists none (as Kafka does).
		noErrorPlace := key == int16(kmsg.DescribeLogDirs) && version < 3
		if !carried && !noErrorPlace {
			t.Errorf("no entry carries an error")
		}

		if noTopicEcho[kmsg.Key(key)] {
			return
		}
		ts := topicSet{st: st}
		if a.topics != nil {
			a.topics(req, &ts)
		}
		echoed := responseTopics(got, st.topicName)
		aliases := map[string]string{}
		topicAliases(reflect.ValueOf(req).Elem(), st.topicName, aliases)
		skip := notEchoed(req, st)
		for _, name := range ts.names {
			if name != "" && !skip[name] && !echoed[name] && !echoed[aliases[name]] {
				t.Errorf("request topic %q not echoed (echoed %q)", name, sortedKeys(echoed))
			}
		}
	})
}

// topicAliases maps the names of request entries that carry both a name
// and an id (unrelated in filled requests) to the id's name, since a
// response may echo either.
func topicAliases(v reflect.Value, resolve func([16]byte) string, out map[string]string) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			topicAliases(v.Elem(), resolve, out)
		}
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			topicAliases(v.Index(i), resolve, out)
		}
	case reflect.Struct:
		name, id := v.FieldByName("Topic"), v.FieldByName("TopicID")
		if name.IsValid() && id.IsValid() && !id.IsZero() {
			var raw [16]byte
			reflect.Copy(reflect.ValueOf(raw[:]), id)
			out[reflect.Indirect(name).String()] = resolve(raw)
		}
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				topicAliases(v.Field(i), resolve, out)
			}
		}
	}
}

// notEchoed are request topics a response rightly leaves out: forgotten
// fetch topics and a DescribeTopicPartitions cursor.
func notEchoed(req kmsg.Request, st *connState) map[string]bool {
	out := map[string]bool{}
	switch r := req.(type) {
	case *kmsg.FetchRequest:
		for _, ft := range r.ForgottenTopics {
			ts := topicSet{st: st}
			ts.ref(ft.Topic, ft.TopicID)
			out[ts.names[0]] = true
		}
	case *kmsg.ShareFetchRequest:
		for _, ft := range r.ForgottenTopicsData {
			out[st.topicName(ft.TopicID)] = true
		}
	case *kmsg.DescribeTopicPartitionsRequest:
		if r.Cursor != nil {
			out[r.Cursor.Topic] = true
		}
	}
	return out
}
