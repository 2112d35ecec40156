package kafka

import "github.com/twmb/franz-go/pkg/kmsg"

// Produce, Fetch, ListOffsets, Metadata, OffsetForLeaderEpoch and
// DescribeTopicPartitions: the requests of producers and consumers that
// name topics and partitions directly.

func produceTopics(r *kmsg.ProduceRequest, t *topicSet) {
	for i := range r.Topics {
		t.ref(r.Topics[i].Topic, r.Topics[i].TopicID)
	}
}

func denyProduce(r *kmsg.ProduceRequest, resp *kmsg.ProduceResponse, d *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewProduceResponseTopic()
		st.Topic, st.TopicID = rt.Topic, rt.TopicID
		for _, rp := range rt.Partitions {
			sp := kmsg.NewProduceResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode = codeTopicAuth
			sp.BaseOffset, sp.LogAppendTime, sp.LogStartOffset = -1, -1, -1
			sp.ErrorMessage = d.msg
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return codeTopicAuth
}

// fetchTopics adds the fetched and forgotten topics and, for an
// incremental fetch, the topics of its session.
func fetchTopics(r *kmsg.FetchRequest, t *topicSet) {
	for i := range r.Topics {
		t.ref(r.Topics[i].Topic, r.Topics[i].TopicID)
	}
	for i := range r.ForgottenTopics {
		t.ref(r.ForgottenTopics[i].Topic, r.ForgottenTopics[i].TopicID)
	}
	if fetchIsIncremental(r) {
		t.st.sessionTopics(r.SessionID, t)
	}
}

// denyFetch answers every requested partition, and every partition of the
// request's fetch session, with TOPIC_AUTHORIZATION_FAILED. The top-level
// error stays 0 (it is about fetch sessions) and the session id is 0,
// which ends the client's session so that its next fetch is a full one.
func denyFetch(r *kmsg.FetchRequest, resp *kmsg.FetchResponse, d *denial) int16 {
	index := map[topicKey]int{}
	seen := map[topicKey]map[int32]bool{}
	add := func(k topicKey, p int32) {
		i, ok := index[k]
		if !ok {
			st := kmsg.NewFetchResponseTopic()
			st.Topic, st.TopicID = k.name, k.id
			i = len(resp.Topics)
			index[k] = i
			resp.Topics = append(resp.Topics, st)
			seen[k] = map[int32]bool{}
		}
		if seen[k][p] {
			return
		}
		seen[k][p] = true
		sp := kmsg.NewFetchResponseTopicPartition()
		sp.Partition = p
		sp.ErrorCode = codeTopicAuth
		sp.HighWatermark, sp.LastStableOffset, sp.LogStartOffset = -1, -1, -1
		sp.PreferredReadReplica = -1
		resp.Topics[i].Partitions = append(resp.Topics[i].Partitions, sp)
	}
	for _, rt := range r.Topics {
		k := topicKey{name: rt.Topic, id: rt.TopicID}
		for _, rp := range rt.Partitions {
			add(k, rp.Partition)
		}
	}
	for k, ps := range d.session {
		for _, p := range ps {
			add(k, p)
		}
	}
	resp.ErrorCode = 0
	resp.SessionID = 0
	return codeTopicAuth
}

func listOffsetsTopics(r *kmsg.ListOffsetsRequest, t *topicSet) {
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
}

func denyListOffsets(r *kmsg.ListOffsetsRequest, resp *kmsg.ListOffsetsResponse, _ *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewListOffsetsResponseTopic()
		st.Topic = rt.Topic
		for _, rp := range rt.Partitions {
			sp := kmsg.NewListOffsetsResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode = codeTopicAuth
			sp.Timestamp, sp.Offset, sp.LeaderEpoch = -1, -1, -1
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return codeTopicAuth
}

// metadataAll reports whether a Metadata request asks for every topic:
// null topics, or an empty list at v0. An empty list at v1+ asks for
// brokers only.
func metadataAll(r *kmsg.MetadataRequest) bool {
	return r.Topics == nil || r.Version == 0 && len(r.Topics) == 0
}

func metadataTopics(r *kmsg.MetadataRequest, t *topicSet) {
	if metadataAll(r) {
		t.unnamed()
		return
	}
	for i := range r.Topics {
		t.refPtr(r.Topics[i].Topic, r.Topics[i].TopicID)
	}
}

// denyMetadata answers every requested topic with
// TOPIC_AUTHORIZATION_FAILED, with the brokers, cluster id and controller
// of the brokers-only Metadata request the inspector sent instead
// (clients replace their broker list with the one in every Metadata
// response). The v13 top-level error (meant for re-bootstrapping) carries
// the error only when no topic entry does.
func denyMetadata(r *kmsg.MetadataRequest, resp *kmsg.MetadataResponse, d *denial) int16 {
	if d.meta != nil {
		resp.Brokers = d.meta.Brokers
		resp.ClusterID = d.meta.ClusterID
		resp.ControllerID = d.meta.ControllerID
	} else {
		resp.ControllerID = -1
	}
	for _, rt := range r.Topics {
		st := kmsg.NewMetadataResponseTopic()
		st.ErrorCode = codeTopicAuth
		st.Topic, st.TopicID = rt.Topic, rt.TopicID
		st.Partitions = []kmsg.MetadataResponseTopicPartition{}
		resp.Topics = append(resp.Topics, st)
	}
	resp.ErrorCode = topOrEntries(len(resp.Topics), codeTopicAuth)
	return codeTopicAuth
}

// metadataProbe is the brokers-only Metadata request sent in place of a
// denied one: an empty (non-null) topic list at the request's version,
// or at v1 when the request is v0 (whose empty list means all topics).
func metadataProbe(r *kmsg.MetadataRequest) *kmsg.MetadataRequest {
	p := kmsg.NewPtrMetadataRequest()
	p.Version = max(r.Version, 1)
	p.Topics = []kmsg.MetadataRequestTopic{}
	p.AllowAutoTopicCreation = false
	return p
}

func offsetForLeaderEpochTopics(r *kmsg.OffsetForLeaderEpochRequest, t *topicSet) {
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
}

func denyOffsetForLeaderEpoch(r *kmsg.OffsetForLeaderEpochRequest, resp *kmsg.OffsetForLeaderEpochResponse, _ *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewOffsetForLeaderEpochResponseTopic()
		st.Topic = rt.Topic
		for _, rp := range rt.Partitions {
			sp := kmsg.NewOffsetForLeaderEpochResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode = codeTopicAuth
			sp.LeaderEpoch, sp.EndOffset = -1, -1
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return codeTopicAuth
}

func describeTopicPartitionsTopics(r *kmsg.DescribeTopicPartitionsRequest, t *topicSet) {
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
	if r.Cursor != nil {
		t.add(r.Cursor.Topic)
	}
}

func denyDescribeTopicPartitions(r *kmsg.DescribeTopicPartitionsRequest, resp *kmsg.DescribeTopicPartitionsResponse, _ *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewDescribeTopicPartitionsResponseTopic()
		st.ErrorCode = codeTopicAuth
		st.Topic = kmsg.StringPtr(rt.Topic)
		st.Partitions = []kmsg.DescribeTopicPartitionsResponseTopicPartition{}
		resp.Topics = append(resp.Topics, st)
	}
	resp.NextCursor = nil
	return codeTopicAuth
}
