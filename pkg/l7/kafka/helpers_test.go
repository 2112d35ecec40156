package kafka

import (
	"bytes"
	"fmt"
	"log/slog"
	"os/exec"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// filler fills kmsg requests with two entries per array, names for every
// string (topic-ish fields get "topic-N"), -1 for integers (which puts
// long varint-looking byte runs into every body, exercising the decode
// guard) and topic ids it remembers, so that a test knows which topics a
// request carries.
type filler struct {
	n   int
	ids map[[16]byte]string
}

func newFiller() *filler { return &filler{ids: map[[16]byte]string{}} }

func (f *filler) next(prefix string) string {
	f.n++
	return fmt.Sprintf("%s-%d", prefix, f.n)
}

// topicField reports whether a string field or []string field names
// topics.
func topicField(name string) bool {
	return name == "Topic" || name == "SinkTopic" || strings.HasSuffix(name, "TopicNames") ||
		name == "SourceTopics" || name == "RepartitionSinkTopics" || name == "TopicNames"
}

func regexField(name string) bool { return strings.Contains(name, "Regex") }

func (f *filler) fill(v reflect.Value, field string) {
	switch v.Kind() {
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			sf := v.Type().Field(i)
			if !sf.IsExported() || sf.Name == "Version" || sf.Name == "UnknownTags" {
				continue
			}
			f.fill(v.Field(i), sf.Name)
		}
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		f.fill(p.Elem(), field)
		v.Set(p)
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			v.SetBytes([]byte{0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3})
			return
		}
		s := reflect.MakeSlice(v.Type(), 2, 2)
		for i := 0; i < 2; i++ {
			f.fill(s.Index(i), field)
		}
		v.Set(s)
	case reflect.String:
		switch {
		case regexField(field):
			v.SetString("regex.*")
		case topicField(field):
			v.SetString(f.next("topic"))
		default:
			v.SetString(f.next(strings.ToLower(field)))
		}
	case reflect.Array:
		if v.Type().Elem().Kind() == reflect.Uint8 && v.Len() == 16 {
			var id [16]byte
			f.n++
			id[0], id[15] = 0xee, byte(f.n)
			id[14] = byte(f.n >> 8)
			if field == "TopicID" || field == "TopidID" {
				f.ids[id] = fmt.Sprintf("idtopic-%d", f.n)
			}
			reflect.Copy(v, reflect.ValueOf(id[:]))
		}
	case reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		switch field {
		case "ResourceType":
			v.SetInt(2) // TOPIC, for configs and ACLs
		case "ResourcePatternType":
			v.SetInt(3) // LITERAL
		case "CoordinatorType", "SessionID", "SessionEpoch":
			v.SetInt(0)
		default:
			v.SetInt(-1)
		}
	case reflect.Uint16, reflect.Uint32:
		v.SetUint(1)
	case reflect.Float64:
		v.SetFloat(1.5)
	case reflect.Bool:
		v.SetBool(true)
	}
}

// filledRequest returns a request of key filled by f, encoded at version
// and decoded back, so that it holds exactly what that version carries,
// along with its encoded body.
func (f *filler) filledRequest(t testing.TB, key, version int16) (kmsg.Request, []byte) {
	t.Helper()
	r := kmsg.RequestForKey(key)
	f.fill(reflect.ValueOf(r).Elem(), "")
	r.SetVersion(version)
	body := r.AppendTo(nil)
	d := kmsg.RequestForKey(key)
	d.SetVersion(version)
	if err := d.ReadFrom(body); err != nil {
		t.Fatalf("%s v%d: filled request does not decode: %v", kmsg.NameForKey(key), version, err)
	}
	return d, body
}

// state returns a connState that knows the filler's topic ids.
func (f *filler) state() *connState {
	s := newConnState()
	for id, name := range f.ids {
		s.learnID(id, name)
	}
	return s
}

// findTopics is an independent, reflective reading of the topics a
// decoded request names, to check the extraction table against.
func findTopics(v reflect.Value, resolve func([16]byte) string, out map[string]bool) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			findTopics(v.Elem(), resolve, out)
		}
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			findTopics(v.Index(i), resolve, out)
		}
	case reflect.Struct:
		t := v.Type()
		named := false
		for _, n := range []string{"Topic", "SinkTopic"} {
			f := v.FieldByName(n)
			switch {
			case !f.IsValid():
			case f.Kind() == reflect.String && f.String() != "":
				out[f.String()], named = true, true
			case f.Kind() == reflect.Pointer && !f.IsNil():
				out[f.Elem().String()], named = true, true
			}
		}
		for _, n := range []string{"TopicID", "TopidID"} {
			if f := v.FieldByName(n); f.IsValid() && !named && !f.IsZero() {
				var id [16]byte
				reflect.Copy(reflect.ValueOf(id[:]), f)
				out[resolve(id)] = true
			}
		}
		if rt := v.FieldByName("ResourceType"); rt.IsValid() && rt.Int() == 2 {
			name := v.FieldByName("ResourceName")
			pattern := v.FieldByName("ResourcePatternType")
			switch {
			case name.Kind() == reflect.Pointer && name.IsNil():
				out[""] = true
			case pattern.IsValid() && pattern.Int() != 3:
				out[""] = true
			default:
				out[reflect.Indirect(name).String()] = true
			}
		}
		for i := 0; i < t.NumField(); i++ {
			sf := t.Field(i)
			f := v.Field(i)
			switch {
			case !sf.IsExported() || sf.Name == "UnknownTags":
			case regexField(sf.Name) && (f.Type() == reflect.TypeFor[*string]() || f.Type() == reflect.TypeFor[[]string]()):
				if f.Kind() == reflect.Pointer && !f.IsNil() || f.Kind() == reflect.Slice && f.Len() > 0 {
					out[""] = true
				}
			case f.Type() == reflect.TypeFor[[]string]() && topicField(sf.Name):
				for j := 0; j < f.Len(); j++ {
					out[f.Index(j).String()] = true
				}
			case f.Kind() == reflect.Struct || f.Kind() == reflect.Slice || f.Kind() == reflect.Pointer:
				findTopics(f, resolve, out)
			}
		}
	}
}

// stubJudge denies topics with the prefix "secret" and the api keys in
// deny; it records what it was asked.
type stubJudge struct {
	mu       sync.Mutex
	denyKeys map[int16]bool
	asked    []l7.KafkaRequest
}

func (j *stubJudge) HTTP(*l7.HTTPRequest) l7.Verdict { return l7.Verdict{} }

func (j *stubJudge) Kafka(r *l7.KafkaRequest) l7.Verdict {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.asked = append(j.asked, *r)
	if j.denyKeys[r.APIKey] {
		return l7.Verdict{Policy: "L7Policy test/kafka", Reason: fmt.Sprintf("api key %d is not allowed", r.APIKey)}
	}
	for _, t := range r.Topics {
		if t == "" || strings.HasPrefix(t, "secret") {
			return l7.Verdict{Policy: "L7Policy test/kafka", Rule: "spec.ingress[0].toPorts[0].rules.kafka[0]",
				Reason: fmt.Sprintf("topic %q is not covered by any rule", t)}
		}
	}
	return l7.Verdict{Allow: true, Policy: "L7Policy test/kafka", Rule: "spec.ingress[0].toPorts[0].rules.kafka[0]"}
}

func (j *stubJudge) requests() []l7.KafkaRequest {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]l7.KafkaRequest(nil), j.asked...)
}

// recorder collects records and log lines of sessions.
type recorder struct {
	mu      sync.Mutex
	records []l7.Record
	logs    bytes.Buffer
}

func (r *recorder) session(j l7.Judge) *l7.Session {
	return &l7.Session{
		Judge:   j,
		Observe: func(rec l7.Record) { r.mu.Lock(); r.records = append(r.records, rec); r.mu.Unlock() },
		Log:     slog.New(slog.NewTextHandler(lockedWriter{r}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

type lockedWriter struct{ r *recorder }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.r.mu.Lock()
	defer w.r.mu.Unlock()
	return w.r.logs.Write(p)
}

func (r *recorder) snapshot() ([]l7.Record, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]l7.Record(nil), r.records...), r.logs.String()
}

func reflectElem(m any) reflect.Value { return reflect.ValueOf(m).Elem() }

// goCommand runs the go tool in the package directory; without one on
// PATH the test is skipped.
func goCommand(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool on PATH")
	}
	return exec.Command(goBin, args...)
}
