package kafka

import "github.com/twmb/franz-go/pkg/kmsg"

// Consumer groups (classic, KIP-848), share groups and streams groups:
// group-level errors are GROUP_AUTHORIZATION_FAILED, topic and partition
// entries TOPIC_AUTHORIZATION_FAILED.

// codeIfTopics is the code a denial is recorded with when topic entries
// may carry it: the topic code when there are any, else the group code.
func codeIfTopics(n int) int16 {
	if n > 0 {
		return codeTopicAuth
	}
	return codeGroupAuth
}

func offsetCommitTopics(r *kmsg.OffsetCommitRequest, t *topicSet) {
	for i := range r.Topics {
		t.ref(r.Topics[i].Topic, r.Topics[i].TopicID)
	}
}

func denyOffsetCommit(r *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, _ *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewOffsetCommitResponseTopic()
		st.Topic, st.TopicID = rt.Topic, rt.TopicID
		for _, rp := range rt.Partitions {
			sp := kmsg.NewOffsetCommitResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode = codeTopicAuth
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return codeIfTopics(len(resp.Topics))
}

// offsetFetchTopics adds the topics of the request, or "" for a group
// whose topics are null (all topics the group committed).
func offsetFetchTopics(r *kmsg.OffsetFetchRequest, t *topicSet) {
	if r.Version <= 7 {
		if r.Version >= 2 && r.Topics == nil {
			t.unnamed()
		}
		for i := range r.Topics {
			t.add(r.Topics[i].Topic)
		}
		return
	}
	for _, g := range r.Groups {
		if g.Topics == nil {
			t.unnamed()
		}
		for i := range g.Topics {
			t.ref(g.Topics[i].Topic, g.Topics[i].TopicID)
		}
	}
}

// denyOffsetFetch answers each partition with TOPIC_AUTHORIZATION_FAILED
// and offset -1; a group asked for all of its topics (nothing to echo)
// gets GROUP_AUTHORIZATION_FAILED at the group (or top) level.
func denyOffsetFetch(r *kmsg.OffsetFetchRequest, resp *kmsg.OffsetFetchResponse, _ *denial) int16 {
	if r.Version <= 7 {
		for _, rt := range r.Topics {
			st := kmsg.NewOffsetFetchResponseTopic()
			st.Topic = rt.Topic
			for _, p := range rt.Partitions {
				sp := kmsg.NewOffsetFetchResponseTopicPartition()
				sp.Partition = p
				sp.Offset, sp.LeaderEpoch = -1, -1
				sp.ErrorCode = codeTopicAuth
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		resp.ErrorCode = topOrEntries(len(resp.Topics), codeGroupAuth)
		return codeIfTopics(len(resp.Topics))
	}
	topics := 0
	for _, rg := range r.Groups {
		sg := kmsg.NewOffsetFetchResponseGroup()
		sg.Group = rg.Group
		for _, rt := range rg.Topics {
			st := kmsg.NewOffsetFetchResponseGroupTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID
			for _, p := range rt.Partitions {
				sp := kmsg.NewOffsetFetchResponseGroupTopicPartition()
				sp.Partition = p
				sp.Offset, sp.LeaderEpoch = -1, -1
				sp.ErrorCode = codeTopicAuth
				st.Partitions = append(st.Partitions, sp)
			}
			sg.Topics = append(sg.Topics, st)
		}
		topics += len(sg.Topics)
		sg.ErrorCode = topOrEntries(len(sg.Topics), codeGroupAuth)
		resp.Groups = append(resp.Groups, sg)
	}
	return codeIfTopics(topics)
}

// coordinatorCode is the denial code for a coordinator of the given type
// (0 group, 1 transaction, 2 share group).
func coordinatorCode(t int8) int16 {
	switch t {
	case 0, 2:
		return codeGroupAuth
	case 1:
		return codeTxnAuth
	default:
		return codeClusterAuth
	}
}

func denyFindCoordinator(r *kmsg.FindCoordinatorRequest, resp *kmsg.FindCoordinatorResponse, d *denial) int16 {
	code := coordinatorCode(r.CoordinatorType)
	if r.Version <= 3 {
		resp.ErrorCode, resp.ErrorMessage = code, d.msg
		resp.NodeID, resp.Host, resp.Port = -1, "", -1
		return code
	}
	for _, k := range r.CoordinatorKeys {
		c := kmsg.NewFindCoordinatorResponseCoordinator()
		c.Key = k
		c.NodeID, c.Host, c.Port = -1, "", -1
		c.ErrorCode, c.ErrorMessage = code, d.msg
		resp.Coordinators = append(resp.Coordinators, c)
	}
	return code
}

func denyJoinGroup(r *kmsg.JoinGroupRequest, resp *kmsg.JoinGroupResponse, _ *denial) int16 {
	resp.ErrorCode = codeGroupAuth
	resp.Generation = -1
	resp.MemberID = r.MemberID
	return codeGroupAuth
}

func denyLeaveGroup(r *kmsg.LeaveGroupRequest, resp *kmsg.LeaveGroupResponse, _ *denial) int16 {
	if r.Version >= 3 {
		for _, m := range r.Members {
			sm := kmsg.NewLeaveGroupResponseMember()
			sm.MemberID, sm.InstanceID = m.MemberID, m.InstanceID
			sm.ErrorCode = codeGroupAuth
			resp.Members = append(resp.Members, sm)
		}
	}
	resp.ErrorCode = topOrEntries(len(resp.Members), codeGroupAuth)
	return codeGroupAuth
}

func denyDescribeGroups(r *kmsg.DescribeGroupsRequest, resp *kmsg.DescribeGroupsResponse, d *denial) int16 {
	for _, g := range r.Groups {
		sg := kmsg.NewDescribeGroupsResponseGroup()
		sg.Group = g
		sg.ErrorCode, sg.ErrorMessage = codeGroupAuth, d.msg
		resp.Groups = append(resp.Groups, sg)
	}
	return codeGroupAuth
}

func denyDeleteGroups(r *kmsg.DeleteGroupsRequest, resp *kmsg.DeleteGroupsResponse, d *denial) int16 {
	for _, g := range r.Groups {
		sg := kmsg.NewDeleteGroupsResponseGroup()
		sg.Group = g
		sg.ErrorCode, sg.ErrorMessage = codeGroupAuth, d.msg
		resp.Groups = append(resp.Groups, sg)
	}
	return codeGroupAuth
}

func offsetDeleteTopics(r *kmsg.OffsetDeleteRequest, t *topicSet) {
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
}

func denyOffsetDelete(r *kmsg.OffsetDeleteRequest, resp *kmsg.OffsetDeleteResponse, _ *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewOffsetDeleteResponseTopic()
		st.Topic = rt.Topic
		for _, rp := range rt.Partitions {
			sp := kmsg.NewOffsetDeleteResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode = codeTopicAuth
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	resp.ErrorCode = topOrEntries(len(resp.Topics), codeGroupAuth)
	return codeIfTopics(len(resp.Topics))
}

// consumerGroupHeartbeatTopics adds the subscribed topics, "" for a
// subscription regex and the owned partitions' topic ids.
func consumerGroupHeartbeatTopics(r *kmsg.ConsumerGroupHeartbeatRequest, t *topicSet) {
	t.addAll(r.SubscribedTopicNames)
	if r.SubscribedTopicRegex != nil {
		t.unnamed()
	}
	for i := range r.Topics {
		t.id(r.Topics[i].TopicID)
	}
}

func denyConsumerGroupHeartbeat(r *kmsg.ConsumerGroupHeartbeatRequest, resp *kmsg.ConsumerGroupHeartbeatResponse, d *denial) int16 {
	resp.ErrorCode, resp.ErrorMessage = codeGroupAuth, d.msg
	resp.MemberID = kmsg.StringPtr(r.MemberID)
	resp.MemberEpoch = -1
	return codeGroupAuth
}

func denyConsumerGroupDescribe(r *kmsg.ConsumerGroupDescribeRequest, resp *kmsg.ConsumerGroupDescribeResponse, d *denial) int16 {
	for _, g := range r.Groups {
		sg := kmsg.NewConsumerGroupDescribeResponseGroup()
		sg.Group = g
		sg.ErrorCode, sg.ErrorMessage = codeGroupAuth, d.msg
		resp.Groups = append(resp.Groups, sg)
	}
	return codeGroupAuth
}

func shareGroupHeartbeatTopics(r *kmsg.ShareGroupHeartbeatRequest, t *topicSet) {
	t.addAll(r.SubscribedTopicNames)
}

func denyShareGroupHeartbeat(r *kmsg.ShareGroupHeartbeatRequest, resp *kmsg.ShareGroupHeartbeatResponse, d *denial) int16 {
	resp.ErrorCode, resp.ErrorMessage = codeGroupAuth, d.msg
	resp.MemberID = kmsg.StringPtr(r.MemberID)
	resp.MemberEpoch = -1
	return codeGroupAuth
}

func denyShareGroupDescribe(r *kmsg.ShareGroupDescribeRequest, resp *kmsg.ShareGroupDescribeResponse, d *denial) int16 {
	for _, g := range r.GroupIDs {
		sg := kmsg.NewShareGroupDescribeResponseGroup()
		sg.GroupID = g
		sg.ErrorCode, sg.ErrorMessage = codeGroupAuth, d.msg
		resp.Groups = append(resp.Groups, sg)
	}
	return codeGroupAuth
}

// streamsGroupHeartbeatTopics adds every topic of the topology: source,
// changelog and repartition topics, and "" for source regexes.
func streamsGroupHeartbeatTopics(r *kmsg.StreamsGroupHeartbeatRequest, t *topicSet) {
	if r.Topology == nil {
		return
	}
	for _, st := range r.Topology.Subtopologies {
		t.addAll(st.SourceTopics)
		if len(st.SourceTopicRegex) > 0 {
			t.unnamed()
		}
		for i := range st.StateChangelogTopics {
			t.add(st.StateChangelogTopics[i].Topic)
		}
		t.addAll(st.RepartitionSinkTopics)
		for i := range st.RepartitionSourceTopics {
			t.add(st.RepartitionSourceTopics[i].Topic)
		}
	}
}

func denyStreamsGroupHeartbeat(r *kmsg.StreamsGroupHeartbeatRequest, resp *kmsg.StreamsGroupHeartbeatResponse, d *denial) int16 {
	resp.ErrorCode, resp.ErrorMessage = codeGroupAuth, d.msg
	resp.MemberID = r.MemberID
	resp.MemberEpoch = -1
	return codeGroupAuth
}

func denyStreamsGroupDescribe(r *kmsg.StreamsGroupDescribeRequest, resp *kmsg.StreamsGroupDescribeResponse, d *denial) int16 {
	for _, g := range r.Groups {
		sg := kmsg.NewStreamsGroupDescribeResponseGroup()
		sg.Group = g
		sg.ErrorCode, sg.ErrorMessage = codeGroupAuth, d.msg
		resp.Groups = append(resp.Groups, sg)
	}
	return codeGroupAuth
}

// topologyNodeTopics adds the source and sink topics of a topology node.
func topologyNodeTopics(n *kmsg.TopologyDescriptionNode, t *topicSet) {
	t.addAll(n.SourceTopics)
	if n.SinkTopic != nil {
		t.add(*n.SinkTopic)
	}
}

func streamsGroupTopologyDescriptionUpdateTopics(r *kmsg.StreamsGroupTopologyDescriptionUpdateRequest, t *topicSet) {
	for i := range r.TopologyDescription.Subtopologies {
		st := &r.TopologyDescription.Subtopologies[i]
		for j := range st.Nodes {
			topologyNodeTopics(&st.Nodes[j], t)
		}
	}
	for i := range r.TopologyDescription.GlobalStores {
		gs := &r.TopologyDescription.GlobalStores[i]
		topologyNodeTopics(&gs.Source, t)
		topologyNodeTopics(&gs.Processor, t)
	}
}

func denyStreamsGroupTopologyDescriptionUpdate(_ *kmsg.StreamsGroupTopologyDescriptionUpdateRequest, resp *kmsg.StreamsGroupTopologyDescriptionUpdateResponse, d *denial) int16 {
	resp.ErrorCode, resp.ErrorMessage = codeGroupAuth, d.msg
	return codeGroupAuth
}

func describeShareGroupOffsetsTopics(r *kmsg.DescribeShareGroupOffsetsRequest, t *topicSet) {
	for _, g := range r.Groups {
		if g.Topics == nil {
			t.unnamed()
		}
		for i := range g.Topics {
			t.add(g.Topics[i].Topic)
		}
	}
}

func denyDescribeShareGroupOffsets(r *kmsg.DescribeShareGroupOffsetsRequest, resp *kmsg.DescribeShareGroupOffsetsResponse, d *denial) int16 {
	topics := 0
	for _, rg := range r.Groups {
		sg := kmsg.NewDescribeShareGroupOffsetsResponseGroup()
		sg.GroupID = rg.GroupID
		for _, rt := range rg.Topics {
			st := kmsg.NewDescribeShareGroupOffsetsResponseGroupTopic()
			st.Topic = rt.Topic
			for _, p := range rt.Partitions {
				sp := kmsg.NewDescribeShareGroupOffsetsResponseGroupTopicPartition()
				sp.Partition = p
				sp.StartOffset, sp.LeaderEpoch, sp.Lag = -1, -1, -1
				sp.ErrorCode, sp.ErrorMessage = codeTopicAuth, d.msg
				st.Partitions = append(st.Partitions, sp)
			}
			sg.Topics = append(sg.Topics, st)
		}
		topics += len(sg.Topics)
		if sg.ErrorCode = topOrEntries(len(sg.Topics), codeGroupAuth); sg.ErrorCode != 0 {
			sg.ErrorMessage = d.msg
		}
		resp.Groups = append(resp.Groups, sg)
	}
	return codeIfTopics(topics)
}

func alterShareGroupOffsetsTopics(r *kmsg.AlterShareGroupOffsetsRequest, t *topicSet) {
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
}

func denyAlterShareGroupOffsets(r *kmsg.AlterShareGroupOffsetsRequest, resp *kmsg.AlterShareGroupOffsetsResponse, d *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewAlterShareGroupOffsetsResponseTopic()
		st.Topic = rt.Topic
		for _, rp := range rt.Partitions {
			sp := kmsg.NewAlterShareGroupOffsetsResponseTopicPartition()
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

func deleteShareGroupOffsetsTopics(r *kmsg.DeleteShareGroupOffsetsRequest, t *topicSet) {
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
}

func denyDeleteShareGroupOffsets(r *kmsg.DeleteShareGroupOffsetsRequest, resp *kmsg.DeleteShareGroupOffsetsResponse, d *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewDeleteShareGroupOffsetsResponseTopic()
		st.Topic = rt.Topic
		st.ErrorCode, st.ErrorMessage = codeTopicAuth, d.msg
		resp.Topics = append(resp.Topics, st)
	}
	if resp.ErrorCode = topOrEntries(len(resp.Topics), codeGroupAuth); resp.ErrorCode != 0 {
		resp.ErrorMessage = d.msg
	}
	return codeIfTopics(len(resp.Topics))
}
