package kafka

import "github.com/twmb/franz-go/pkg/kmsg"

// Inter-broker and KRaft controller requests. A client has no business
// sending them; when a policy denies them every entry, topic partitions
// included, carries CLUSTER_AUTHORIZATION_FAILED (they need the cluster
// permission in Kafka). The topics they name are still reported.

func leaderAndISRTopics(r *kmsg.LeaderAndISRRequest, t *topicSet) {
	for i := range r.PartitionStates {
		t.add(r.PartitionStates[i].Topic)
	}
	for i := range r.TopicStates {
		t.ref(r.TopicStates[i].Topic, r.TopicStates[i].TopicID)
	}
}

func denyLeaderAndISR(r *kmsg.LeaderAndISRRequest, resp *kmsg.LeaderAndISRResponse, _ *denial) int16 {
	part := func(topic string, p int32) kmsg.LeaderAndISRResponseTopicPartition {
		sp := kmsg.NewLeaderAndISRResponseTopicPartition()
		sp.Topic, sp.Partition, sp.ErrorCode = topic, p, codeClusterAuth
		return sp
	}
	entries := 0
	if r.Version <= 4 {
		for _, ps := range r.PartitionStates {
			resp.Partitions = append(resp.Partitions, part(ps.Topic, ps.Partition))
		}
		for _, ts := range r.TopicStates {
			for _, ps := range ts.PartitionStates {
				resp.Partitions = append(resp.Partitions, part(ts.Topic, ps.Partition))
			}
		}
		entries = len(resp.Partitions)
	} else {
		for _, ts := range r.TopicStates {
			st := kmsg.NewLeaderAndISRResponseTopic()
			st.TopicID = ts.TopicID
			for _, ps := range ts.PartitionStates {
				st.Partitions = append(st.Partitions, part(ts.Topic, ps.Partition))
			}
			entries += len(st.Partitions)
			resp.Topics = append(resp.Topics, st)
		}
	}
	resp.ErrorCode = topOrEntries(entries, codeClusterAuth)
	return codeClusterAuth
}

func stopReplicaTopics(r *kmsg.StopReplicaRequest, t *topicSet) {
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
}

func denyStopReplica(r *kmsg.StopReplicaRequest, resp *kmsg.StopReplicaResponse, _ *denial) int16 {
	add := func(topic string, p int32) {
		sp := kmsg.NewStopReplicaResponsePartition()
		sp.Topic, sp.Partition, sp.ErrorCode = topic, p, codeClusterAuth
		resp.Partitions = append(resp.Partitions, sp)
	}
	for _, rt := range r.Topics {
		switch {
		case r.Version == 0:
			add(rt.Topic, rt.Partition)
		case r.Version <= 2:
			for _, p := range rt.Partitions {
				add(rt.Topic, p)
			}
		default:
			for _, ps := range rt.PartitionStates {
				add(rt.Topic, ps.Partition)
			}
		}
	}
	resp.ErrorCode = topOrEntries(len(resp.Partitions), codeClusterAuth)
	return codeClusterAuth
}

func updateMetadataTopics(r *kmsg.UpdateMetadataRequest, t *topicSet) {
	for i := range r.PartitionStates {
		t.add(r.PartitionStates[i].Topic)
	}
	for i := range r.TopicStates {
		t.ref(r.TopicStates[i].Topic, r.TopicStates[i].TopicID)
	}
}

func denyUpdateMetadata(_ *kmsg.UpdateMetadataRequest, resp *kmsg.UpdateMetadataResponse, _ *denial) int16 {
	resp.ErrorCode = codeClusterAuth
	return codeClusterAuth
}

func writeTxnMarkersTopics(r *kmsg.WriteTxnMarkersRequest, t *topicSet) {
	for _, m := range r.Markers {
		for i := range m.Topics {
			t.add(m.Topics[i].Topic)
		}
	}
}

func denyWriteTxnMarkers(r *kmsg.WriteTxnMarkersRequest, resp *kmsg.WriteTxnMarkersResponse, _ *denial) int16 {
	for _, m := range r.Markers {
		sm := kmsg.NewWriteTxnMarkersResponseMarker()
		sm.ProducerID = m.ProducerID
		for _, rt := range m.Topics {
			st := kmsg.NewWriteTxnMarkersResponseMarkerTopic()
			st.Topic = rt.Topic
			for _, p := range rt.Partitions {
				sp := kmsg.NewWriteTxnMarkersResponseMarkerTopicPartition()
				sp.Partition, sp.ErrorCode = p, codeClusterAuth
				st.Partitions = append(st.Partitions, sp)
			}
			sm.Topics = append(sm.Topics, st)
		}
		resp.Markers = append(resp.Markers, sm)
	}
	return codeClusterAuth
}

func voteTopics(r *kmsg.VoteRequest, t *topicSet) {
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
}

func denyVote(r *kmsg.VoteRequest, resp *kmsg.VoteResponse, _ *denial) int16 {
	parts := 0
	for _, rt := range r.Topics {
		st := kmsg.NewVoteResponseTopic()
		st.Topic = rt.Topic
		for _, rp := range rt.Partitions {
			sp := kmsg.NewVoteResponseTopicPartition()
			sp.Partition, sp.ErrorCode = rp.Partition, codeClusterAuth
			sp.LeaderID, sp.LeaderEpoch = -1, -1
			st.Partitions = append(st.Partitions, sp)
		}
		parts += len(st.Partitions)
		resp.Topics = append(resp.Topics, st)
	}
	resp.ErrorCode = topOrEntries(parts, codeClusterAuth)
	return codeClusterAuth
}

func beginQuorumEpochTopics(r *kmsg.BeginQuorumEpochRequest, t *topicSet) {
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
}

func denyBeginQuorumEpoch(r *kmsg.BeginQuorumEpochRequest, resp *kmsg.BeginQuorumEpochResponse, _ *denial) int16 {
	parts := 0
	for _, rt := range r.Topics {
		st := kmsg.NewBeginQuorumEpochResponseTopic()
		st.Topic = rt.Topic
		for _, rp := range rt.Partitions {
			sp := kmsg.NewBeginQuorumEpochResponseTopicPartition()
			sp.Partition, sp.ErrorCode = rp.Partition, codeClusterAuth
			sp.LeaderID, sp.LeaderEpoch = -1, -1
			st.Partitions = append(st.Partitions, sp)
		}
		parts += len(st.Partitions)
		resp.Topics = append(resp.Topics, st)
	}
	resp.ErrorCode = topOrEntries(parts, codeClusterAuth)
	return codeClusterAuth
}

func endQuorumEpochTopics(r *kmsg.EndQuorumEpochRequest, t *topicSet) {
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
}

func denyEndQuorumEpoch(r *kmsg.EndQuorumEpochRequest, resp *kmsg.EndQuorumEpochResponse, _ *denial) int16 {
	parts := 0
	for _, rt := range r.Topics {
		st := kmsg.NewEndQuorumEpochResponseTopic()
		st.Topic = rt.Topic
		for _, rp := range rt.Partitions {
			sp := kmsg.NewEndQuorumEpochResponseTopicPartition()
			sp.Partition, sp.ErrorCode = rp.Partition, codeClusterAuth
			sp.LeaderID, sp.LeaderEpoch = -1, -1
			st.Partitions = append(st.Partitions, sp)
		}
		parts += len(st.Partitions)
		resp.Topics = append(resp.Topics, st)
	}
	resp.ErrorCode = topOrEntries(parts, codeClusterAuth)
	return codeClusterAuth
}

func describeQuorumTopics(r *kmsg.DescribeQuorumRequest, t *topicSet) {
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
}

func denyDescribeQuorum(r *kmsg.DescribeQuorumRequest, resp *kmsg.DescribeQuorumResponse, d *denial) int16 {
	parts := 0
	for _, rt := range r.Topics {
		st := kmsg.NewDescribeQuorumResponseTopic()
		st.Topic = rt.Topic
		for _, rp := range rt.Partitions {
			sp := kmsg.NewDescribeQuorumResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode, sp.ErrorMessage = codeClusterAuth, d.msg
			sp.LeaderID, sp.LeaderEpoch, sp.HighWatermark = -1, -1, -1
			st.Partitions = append(st.Partitions, sp)
		}
		parts += len(st.Partitions)
		resp.Topics = append(resp.Topics, st)
	}
	if resp.ErrorCode = topOrEntries(parts, codeClusterAuth); resp.ErrorCode != 0 {
		resp.ErrorMessage = d.msg
	}
	return codeClusterAuth
}

func alterPartitionTopics(r *kmsg.AlterPartitionRequest, t *topicSet) {
	for i := range r.Topics {
		t.ref(r.Topics[i].Topic, r.Topics[i].TopicID)
	}
}

func denyAlterPartition(r *kmsg.AlterPartitionRequest, resp *kmsg.AlterPartitionResponse, _ *denial) int16 {
	parts := 0
	for _, rt := range r.Topics {
		st := kmsg.NewAlterPartitionResponseTopic()
		st.Topic, st.TopidID = rt.Topic, rt.TopicID
		for _, rp := range rt.Partitions {
			sp := kmsg.NewAlterPartitionResponseTopicPartition()
			sp.Partition, sp.ErrorCode = rp.Partition, codeClusterAuth
			sp.LeaderID, sp.LeaderEpoch = -1, -1
			st.Partitions = append(st.Partitions, sp)
		}
		parts += len(st.Partitions)
		resp.Topics = append(resp.Topics, st)
	}
	resp.ErrorCode = topOrEntries(parts, codeClusterAuth)
	return codeClusterAuth
}

func fetchSnapshotTopics(r *kmsg.FetchSnapshotRequest, t *topicSet) {
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
}

func denyFetchSnapshot(r *kmsg.FetchSnapshotRequest, resp *kmsg.FetchSnapshotResponse, _ *denial) int16 {
	parts := 0
	for _, rt := range r.Topics {
		st := kmsg.NewFetchSnapshotResponseTopic()
		st.Topic = rt.Topic
		for _, rp := range rt.Partitions {
			sp := kmsg.NewFetchSnapshotResponseTopicPartition()
			sp.Partition, sp.ErrorCode = rp.Partition, codeClusterAuth
			st.Partitions = append(st.Partitions, sp)
		}
		parts += len(st.Partitions)
		resp.Topics = append(resp.Topics, st)
	}
	resp.ErrorCode = topOrEntries(parts, codeClusterAuth)
	return codeClusterAuth
}

func assignReplicasToDirsTopics(r *kmsg.AssignReplicasToDirsRequest, t *topicSet) {
	for _, dir := range r.Directories {
		for i := range dir.Topics {
			t.id(dir.Topics[i].TopicID)
		}
	}
}

func denyAssignReplicasToDirs(r *kmsg.AssignReplicasToDirsRequest, resp *kmsg.AssignReplicasToDirsResponse, _ *denial) int16 {
	parts := 0
	for _, rd := range r.Directories {
		sd := kmsg.NewAssignReplicasToDirsResponseDirectory()
		sd.ID = rd.ID
		for _, rt := range rd.Topics {
			st := kmsg.NewAssignReplicasToDirsResponseDirectoryTopic()
			st.TopicID = rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewAssignReplicasToDirsResponseDirectoryTopicPartition()
				sp.Partition, sp.ErrorCode = rp.Partition, codeClusterAuth
				st.Partitions = append(st.Partitions, sp)
			}
			parts += len(st.Partitions)
			sd.Topics = append(sd.Topics, st)
		}
		resp.Directories = append(resp.Directories, sd)
	}
	resp.ErrorCode = topOrEntries(parts, codeClusterAuth)
	return codeClusterAuth
}
