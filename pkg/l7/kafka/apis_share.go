package kafka

import "github.com/twmb/franz-go/pkg/kmsg"

// Share groups (KIP-932): ShareFetch and ShareAcknowledge name topics by
// id only, so their topics resolve through the ids learnt on the
// connection or stay "". The share-group state requests (83-87) go from
// brokers to the share coordinator and are cluster-level.

func shareFetchTopics(r *kmsg.ShareFetchRequest, t *topicSet) {
	for i := range r.Topics {
		t.id(r.Topics[i].TopicID)
	}
	for i := range r.ForgottenTopicsData {
		t.id(r.ForgottenTopicsData[i].TopicID)
	}
}

func denyShareFetch(r *kmsg.ShareFetchRequest, resp *kmsg.ShareFetchResponse, d *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewShareFetchResponseTopic()
		st.TopicID = rt.TopicID
		for _, rp := range rt.Partitions {
			sp := kmsg.NewShareFetchResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode, sp.ErrorMessage = codeTopicAuth, d.msg
			if len(rp.AcknowledgementBatches) > 0 {
				sp.AcknowledgeErrorCode, sp.AcknowledgeErrorMessage = codeTopicAuth, d.msg
			}
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	if resp.ErrorCode = topOrEntries(len(resp.Topics), codeGroupAuth); resp.ErrorCode != 0 {
		resp.ErrorMessage = d.msg
	}
	return codeIfTopics(len(resp.Topics))
}

func shareAcknowledgeTopics(r *kmsg.ShareAcknowledgeRequest, t *topicSet) {
	for i := range r.Topics {
		t.id(r.Topics[i].TopicID)
	}
}

func denyShareAcknowledge(r *kmsg.ShareAcknowledgeRequest, resp *kmsg.ShareAcknowledgeResponse, d *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewShareAcknowledgeResponseTopic()
		st.TopicID = rt.TopicID
		for _, rp := range rt.Partitions {
			sp := kmsg.NewShareAcknowledgeResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode, sp.ErrorMessage = codeTopicAuth, d.msg
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	if resp.ErrorCode = topOrEntries(len(resp.Topics), codeGroupAuth); resp.ErrorCode != 0 {
		resp.ErrorMessage = d.msg
	}
	return codeIfTopics(len(resp.Topics))
}

func initializeShareGroupStateTopics(r *kmsg.InitializeShareGroupStateRequest, t *topicSet) {
	for i := range r.Topics {
		t.id(r.Topics[i].TopicID)
	}
}

func denyInitializeShareGroupState(r *kmsg.InitializeShareGroupStateRequest, resp *kmsg.InitializeShareGroupStateResponse, d *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewInitializeShareGroupStateResponseTopic()
		st.TopicID = rt.TopicID
		for _, rp := range rt.Partitions {
			sp := kmsg.NewInitializeShareGroupStateResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode, sp.ErrorMessage = codeClusterAuth, d.msg
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return codeClusterAuth
}

func readShareGroupStateTopics(r *kmsg.ReadShareGroupStateRequest, t *topicSet) {
	for i := range r.Topics {
		t.id(r.Topics[i].TopicID)
	}
}

func denyReadShareGroupState(r *kmsg.ReadShareGroupStateRequest, resp *kmsg.ReadShareGroupStateResponse, d *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewReadShareGroupStateResponseTopic()
		st.TopicID = rt.TopicID
		for _, rp := range rt.Partitions {
			sp := kmsg.NewReadShareGroupStateResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode, sp.ErrorMessage = codeClusterAuth, d.msg
			sp.StateEpoch, sp.StartOffset = -1, -1
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return codeClusterAuth
}

func writeShareGroupStateTopics(r *kmsg.WriteShareGroupStateRequest, t *topicSet) {
	for i := range r.Topics {
		t.id(r.Topics[i].TopicID)
	}
}

func denyWriteShareGroupState(r *kmsg.WriteShareGroupStateRequest, resp *kmsg.WriteShareGroupStateResponse, d *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewWriteShareGroupStateResponseTopic()
		st.TopicID = rt.TopicID
		for _, rp := range rt.Partitions {
			sp := kmsg.NewWriteShareGroupStateResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode, sp.ErrorMessage = codeClusterAuth, d.msg
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return codeClusterAuth
}

func deleteShareGroupStateTopics(r *kmsg.DeleteShareGroupStateRequest, t *topicSet) {
	for i := range r.Topics {
		t.id(r.Topics[i].TopicID)
	}
}

func denyDeleteShareGroupState(r *kmsg.DeleteShareGroupStateRequest, resp *kmsg.DeleteShareGroupStateResponse, d *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewDeleteShareGroupStateResponseTopic()
		st.TopicID = rt.TopicID
		for _, rp := range rt.Partitions {
			sp := kmsg.NewDeleteShareGroupStateResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode, sp.ErrorMessage = codeClusterAuth, d.msg
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return codeClusterAuth
}

func readShareGroupStateSummaryTopics(r *kmsg.ReadShareGroupStateSummaryRequest, t *topicSet) {
	for i := range r.Topics {
		t.id(r.Topics[i].TopicID)
	}
}

func denyReadShareGroupStateSummary(r *kmsg.ReadShareGroupStateSummaryRequest, resp *kmsg.ReadShareGroupStateSummaryResponse, d *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewReadShareGroupStateSummaryResponseTopic()
		st.TopicID = rt.TopicID
		for _, rp := range rt.Partitions {
			sp := kmsg.NewReadShareGroupStateSummaryResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode, sp.ErrorMessage = codeClusterAuth, d.msg
			sp.StateEpoch, sp.LeaderEpoch, sp.StartOffset = -1, -1, -1
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return codeClusterAuth
}
