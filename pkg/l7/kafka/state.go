package kafka

import (
	"sync"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// Bounds of the per-connection state.
const (
	// maxTopicIDs bounds the learnt topic ids; ids beyond it stay
	// unresolved (and fail topic rules closed).
	maxTopicIDs = 1 << 16
	// maxFetchSessions bounds the tracked fetch sessions; a client uses
	// one per connection.
	maxFetchSessions = 16 // beyond it, some other session is evicted
)

// connState is what the inspector learns about one connection from the
// broker's responses: topic ids and the partitions of fetch sessions.
// The request reader reads it and the response writer updates it.
type connState struct {
	mu       sync.Mutex
	ids      map[[16]byte]string
	sessions map[int32]*fetchSession
}

// topicKey names a topic in a fetch session: by id when the session's
// requests use ids, else by name.
type topicKey struct {
	name string
	id   [16]byte
}

// fetchSession holds the partitions a fetch session covers.
type fetchSession struct {
	parts map[topicKey]map[int32]struct{}
}

func newConnState() *connState {
	return &connState{ids: map[[16]byte]string{}, sessions: map[int32]*fetchSession{}}
}

// topicName resolves a topic id learnt on this connection, or returns ""
// so that topic rules fail closed. A nil state knows no ids.
func (s *connState) topicName(id [16]byte) string {
	if s == nil {
		return ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ids[id]
}

// learnID records that id names topic.
func (s *connState) learnID(id [16]byte, topic string) {
	if id == [16]byte{} || topic == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.ids[id]; ok || len(s.ids) < maxTopicIDs {
		s.ids[id] = topic
	}
}

// fetchIsIncremental reports whether a Fetch request continues a fetch
// session and may therefore omit partitions it keeps reading (KIP-227).
func fetchIsIncremental(r *kmsg.FetchRequest) bool {
	return r.Version >= 7 && r.SessionID != 0 && r.SessionEpoch > 0
}

// sessionTopics adds the topics of fetch session id to t, or "" when the
// session was not created on this connection.
func (s *connState) sessionTopics(id int32, t *topicSet) {
	if s == nil {
		t.unnamed()
		return
	}
	s.mu.Lock()
	fs := s.sessions[id]
	var keys []topicKey
	if fs != nil {
		keys = make([]topicKey, 0, len(fs.parts))
		for k := range fs.parts {
			keys = append(keys, k)
		}
	}
	s.mu.Unlock()
	if fs == nil {
		t.unnamed()
		return
	}
	for _, k := range keys {
		t.ref(k.name, k.id)
	}
}

// endSession forgets fetch session id and returns its partitions: a
// denied fetch answers with session id 0, after which the client starts
// a new session.
func (s *connState) endSession(id int32) map[topicKey][]int32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	fs := s.sessions[id]
	if fs == nil {
		return nil
	}
	delete(s.sessions, id)
	out := make(map[topicKey][]int32, len(fs.parts))
	for k, ps := range fs.parts {
		for p := range ps {
			out[k] = append(out[k], p)
		}
	}
	return out
}

// fetchResponded updates the fetch sessions after the broker answered
// req with the given top-level error code and session id.
func (s *connState) fetchResponded(req *kmsg.FetchRequest, errCode int16, sessionID int32) {
	if req.Version < 7 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if errCode != 0 || sessionID == 0 || req.SessionEpoch == -1 {
		delete(s.sessions, req.SessionID)
		if errCode == 0 && sessionID != 0 && req.SessionEpoch == -1 {
			delete(s.sessions, sessionID)
		}
		return
	}
	var fs *fetchSession
	switch {
	case req.SessionEpoch == 0:
		// A full fetch that creates a session: it covers exactly this
		// request (a nonzero request id is the session it replaces).
		delete(s.sessions, req.SessionID)
		for id := range s.sessions {
			if len(s.sessions) < maxFetchSessions {
				break
			}
			delete(s.sessions, id) // evict: a client keeps one session per connection
		}
		fs = &fetchSession{parts: map[topicKey]map[int32]struct{}{}}
		s.sessions[sessionID] = fs
	case fetchIsIncremental(req) && req.SessionID == sessionID:
		// An incremental fetch; a session created elsewhere stays
		// unknown (nil).
		fs = s.sessions[sessionID]
	}
	if fs == nil {
		return
	}
	for i := range req.Topics {
		rt := &req.Topics[i]
		k := topicKey{name: rt.Topic, id: rt.TopicID}
		ps := fs.parts[k]
		if ps == nil {
			ps = map[int32]struct{}{}
			fs.parts[k] = ps
		}
		for j := range rt.Partitions {
			ps[rt.Partitions[j].Partition] = struct{}{}
		}
	}
	for i := range req.ForgottenTopics {
		ft := &req.ForgottenTopics[i]
		k := topicKey{name: ft.Topic, id: ft.TopicID}
		ps := fs.parts[k]
		for _, p := range ft.Partitions {
			delete(ps, p)
		}
		if ps != nil && len(ps) == 0 {
			delete(fs.parts, k)
		}
	}
}
