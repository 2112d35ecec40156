package kafka

import (
	"fmt"
	"slices"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"
)

func ptr(s string) *string { return &s }

// TestTopicConventions covers the cases a filled request cannot show:
// "all topics", brokers-only metadata, regexes, patterns, unknown ids,
// fetch sessions and ordering.
func TestTopicConventions(t *testing.T) {
	known := [16]byte{1}
	unknown := [16]byte{2}
	st := newConnState()
	st.learnID(known, "orders")
	session := kmsg.NewPtrFetchRequest()
	session.Version, session.SessionEpoch = 12, 0
	session.Topics = []kmsg.FetchRequestTopic{{Topic: "orders", Partitions: []kmsg.FetchRequestTopicPartition{{Partition: 0}}}}
	st.fetchResponded(session, 0, 42)

	metadata := func(v int16, topics []kmsg.MetadataRequestTopic) kmsg.Request {
		r := kmsg.NewPtrMetadataRequest()
		r.Version, r.Topics = v, topics
		return r
	}
	fetch := func(v int16, id, epoch int32, topics ...kmsg.FetchRequestTopic) kmsg.Request {
		r := kmsg.NewPtrFetchRequest()
		r.Version, r.SessionID, r.SessionEpoch, r.Topics = v, id, epoch, topics
		return r
	}
	tests := []struct {
		name string
		req  kmsg.Request
		want []string
	}{
		{"metadata null topics is all", metadata(12, nil), []string{""}},
		{"metadata v0 empty list is all", metadata(0, []kmsg.MetadataRequestTopic{}), []string{""}},
		{"metadata v1 empty list is brokers only", metadata(1, []kmsg.MetadataRequestTopic{}), nil},
		{"metadata names", metadata(12, []kmsg.MetadataRequestTopic{{Topic: ptr("a")}, {Topic: ptr("b")}, {Topic: ptr("a")}}), []string{"a", "b"}},
		{"metadata by known id", metadata(12, []kmsg.MetadataRequestTopic{{TopicID: known}}), []string{"orders"}},
		{"metadata by unknown id", metadata(12, []kmsg.MetadataRequestTopic{{TopicID: unknown}}), []string{""}},
		{"fetch v13 known id", fetch(13, 0, 0, kmsg.FetchRequestTopic{TopicID: known}), []string{"orders"}},
		{"fetch v13 unknown id", fetch(13, 0, 0, kmsg.FetchRequestTopic{TopicID: unknown}), []string{""}},
		{"fetch full with session id 0", fetch(12, 0, 0, kmsg.FetchRequestTopic{Topic: "x"}), []string{"x"}},
		{"fetch incremental on known session adds its topics", fetch(12, 42, 1), []string{"orders"}},
		{"fetch incremental on known session plus new topic", fetch(12, 42, 1, kmsg.FetchRequestTopic{Topic: "x"}), []string{"x", "orders"}},
		{"fetch incremental on unknown session", fetch(12, 99, 3), []string{""}},
		{"fetch closing a session is not incremental", fetch(12, 42, -1, kmsg.FetchRequestTopic{Topic: "x"}), []string{"x"}},
		{"offset fetch v1 empty", func() kmsg.Request {
			r := kmsg.NewPtrOffsetFetchRequest()
			r.Version, r.Topics = 1, []kmsg.OffsetFetchRequestTopic{}
			return r
		}(), nil},
		{"offset fetch v2 null is all", func() kmsg.Request {
			r := kmsg.NewPtrOffsetFetchRequest()
			r.Version = 2
			return r
		}(), []string{""}},
		{"offset fetch v8 group with null topics", func() kmsg.Request {
			r := kmsg.NewPtrOffsetFetchRequest()
			r.Version = 8
			r.Groups = []kmsg.OffsetFetchRequestGroup{{Group: "g", Topics: []kmsg.OffsetFetchRequestGroupTopic{{Topic: "a"}}}, {Group: "h"}}
			return r
		}(), []string{"a", ""}},
		{"describe log dirs null is all", kmsg.NewPtrDescribeLogDirsRequest(), []string{""}},
		{"elect leaders null is all", kmsg.NewPtrElectLeadersRequest(), []string{""}},
		{"list reassignments null is all", kmsg.NewPtrListPartitionReassignmentsRequest(), []string{""}},
		{"consumer heartbeat regex", func() kmsg.Request {
			r := kmsg.NewPtrConsumerGroupHeartbeatRequest()
			r.SubscribedTopicNames = []string{"a"}
			r.SubscribedTopicRegex = ptr("secret.*")
			return r
		}(), []string{"a", ""}},
		{"prefixed topic acl", func() kmsg.Request {
			r := kmsg.NewPtrCreateACLsRequest()
			r.Creations = []kmsg.CreateACLsRequestCreation{
				{ResourceType: kmsg.ACLResourceTypeTopic, ResourceName: "a", ResourcePatternType: kmsg.ACLResourcePatternTypeLiteral},
				{ResourceType: kmsg.ACLResourceTypeTopic, ResourceName: "sec", ResourcePatternType: 4},
				{ResourceType: 3, ResourceName: "group", ResourcePatternType: kmsg.ACLResourcePatternTypeLiteral},
			}
			return r
		}(), []string{"a", ""}},
		{"wildcard topic acl", func() kmsg.Request {
			r := kmsg.NewPtrDescribeACLsRequest()
			r.ResourceType, r.ResourceName = kmsg.ACLResourceTypeTopic, ptr("*")
			return r
		}(), []string{""}},
		{"broker config is not a topic", func() kmsg.Request {
			r := kmsg.NewPtrDescribeConfigsRequest()
			r.Resources = []kmsg.DescribeConfigsRequestResource{{ResourceType: 4, ResourceName: "1"}, {ResourceType: 2, ResourceName: "t"}}
			return r
		}(), []string{"t"}},
		{"produce with an empty topic name", func() kmsg.Request {
			r := kmsg.NewPtrProduceRequest()
			r.Topics = []kmsg.ProduceRequestTopic{{Topic: ""}}
			return r
		}(), []string{""}},
		{"no topics", kmsg.NewPtrProduceRequest(), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, _ := lookupAPI(tt.req.Key())
			ts := topicSet{st: st}
			a.topics(tt.req, &ts)
			if !slices.Equal(ts.names, tt.want) {
				t.Fatalf("topics = %q, want %q", ts.names, tt.want)
			}
		})
	}
}

// TestTopicSetManyTopics exercises the map path of deduplication.
func TestTopicSetManyTopics(t *testing.T) {
	var ts topicSet
	var want []string
	for i := range 100 {
		name := fmt.Sprintf("t%d", i)
		want = append(want, name)
		ts.add(name)
		ts.add(name)
		ts.add("t0")
	}
	if !slices.Equal(ts.names, want) {
		t.Fatalf("got %d names, want %d in order", len(ts.names), len(want))
	}
}

// TestFetchSessionTracking follows a session through its life.
func TestFetchSessionTracking(t *testing.T) {
	st := newConnState()
	req := func(id, epoch int32, topics []kmsg.FetchRequestTopic, forgotten []kmsg.FetchRequestForgottenTopic) *kmsg.FetchRequest {
		r := kmsg.NewPtrFetchRequest()
		r.Version, r.SessionID, r.SessionEpoch, r.Topics, r.ForgottenTopics = 12, id, epoch, topics, forgotten
		return r
	}
	part := func(topic string, ps ...int32) kmsg.FetchRequestTopic {
		ft := kmsg.FetchRequestTopic{Topic: topic}
		for _, p := range ps {
			ft.Partitions = append(ft.Partitions, kmsg.FetchRequestTopicPartition{Partition: p})
		}
		return ft
	}
	topics := func(id int32) []string {
		ts := topicSet{st: st}
		st.sessionTopics(id, &ts)
		slices.Sort(ts.names)
		return ts.names
	}

	st.fetchResponded(req(0, 0, []kmsg.FetchRequestTopic{part("a", 0, 1)}, nil), 0, 5)
	if got := topics(5); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("after creation: %q", got)
	}
	st.fetchResponded(req(5, 1, []kmsg.FetchRequestTopic{part("b", 0)}, nil), 0, 5)
	if got := topics(5); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("after adding b: %q", got)
	}
	st.fetchResponded(req(5, 2, nil, []kmsg.FetchRequestForgottenTopic{{Topic: "a", Partitions: []int32{0, 1}}}), 0, 5)
	if got := topics(5); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("after forgetting a: %q", got)
	}
	// An error (e.g. FETCH_SESSION_ID_NOT_FOUND) forgets the session.
	st.fetchResponded(req(5, 3, nil, nil), 70, 0)
	if got := topics(5); !slices.Equal(got, []string{""}) {
		t.Fatalf("after error: %q", got)
	}
	// A denial ends the session and echoes its partitions.
	st.fetchResponded(req(0, 0, []kmsg.FetchRequestTopic{part("b", 0)}, nil), 0, 6)
	if got := st.endSession(6); len(got) != 1 || len(got[topicKey{name: "b"}]) != 1 {
		t.Fatalf("partitions: %v", got)
	}
	if got := topics(6); !slices.Equal(got, []string{""}) {
		t.Fatalf("after a denial: %q", got)
	}
	// An incremental fetch on a session created elsewhere stays unknown.
	st.fetchResponded(req(9, 4, []kmsg.FetchRequestTopic{part("c", 0)}, nil), 0, 9)
	if got := topics(9); !slices.Equal(got, []string{""}) {
		t.Fatalf("foreign session: %q", got)
	}
	// Sessions are bounded, and the newest is always tracked.
	for i := range int32(maxFetchSessions + 5) {
		st.fetchResponded(req(0, 0, []kmsg.FetchRequestTopic{part("a", 0)}, nil), 0, 100+i)
	}
	if len(st.sessions) > maxFetchSessions {
		t.Fatalf("%d sessions tracked", len(st.sessions))
	}
	if got := topics(100 + maxFetchSessions + 4); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("newest session: %q", got)
	}
}

// TestLearnIDsBounded: the id map stops growing at its bound.
func TestLearnIDsBounded(t *testing.T) {
	st := newConnState()
	for i := range maxTopicIDs + 10 {
		st.learnID([16]byte{byte(i), byte(i >> 8), byte(i >> 16), 1}, "t")
	}
	if len(st.ids) != maxTopicIDs {
		t.Fatalf("%d ids", len(st.ids))
	}
	st.learnID([16]byte{}, "zero")
	st.learnID([16]byte{9, 9, 9}, "")
	if st.topicName([16]byte{}) != "" {
		t.Fatal("zero id learnt")
	}
}
