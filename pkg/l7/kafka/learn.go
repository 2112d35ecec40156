package kafka

import "github.com/twmb/franz-go/pkg/kmsg"

// learnsIDs reports whether the response to a request of this key and
// version carries topic ids next to names, which the inspector learns.
func learnsIDs(key, version int16) bool {
	switch kmsg.Key(key) {
	case kmsg.Metadata:
		return version >= 10
	case kmsg.CreateTopics:
		return version >= 7
	case kmsg.DescribeTopicPartitions:
		return true
	}
	return false
}

// learnIDs decodes a Metadata, CreateTopics or DescribeTopicPartitions
// response body and records its topic ids. A body that does not decode
// teaches nothing; it is still relayed, the client will judge it.
func (s *connState) learnIDs(key, version int16, body []byte) {
	resp := kmsg.ResponseForKey(key)
	resp.SetVersion(version)
	if decodeBody(resp, body) != nil {
		return
	}
	switch r := resp.(type) {
	case *kmsg.MetadataResponse:
		for _, t := range r.Topics {
			if t.Topic != nil && t.ErrorCode == 0 {
				s.learnID(t.TopicID, *t.Topic)
			}
		}
	case *kmsg.CreateTopicsResponse:
		for _, t := range r.Topics {
			if t.ErrorCode == 0 {
				s.learnID(t.TopicID, t.Topic)
			}
		}
	case *kmsg.DescribeTopicPartitionsResponse:
		for _, t := range r.Topics {
			if t.Topic != nil && t.ErrorCode == 0 {
				s.learnID(t.TopicID, *t.Topic)
			}
		}
	}
}

// fetchSessionFields reads the top-level error code and session id at
// the start of a Fetch v7+ response body.
func fetchSessionFields(body []byte) (errCode int16, sessionID int32, ok bool) {
	r := kreader{Src: body}
	r.Int32() // throttle
	errCode = r.Int16()
	sessionID = r.Int32()
	return errCode, sessionID, r.Ok()
}
