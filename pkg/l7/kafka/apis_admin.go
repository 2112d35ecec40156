package kafka

import "github.com/twmb/franz-go/pkg/kmsg"

// Admin requests: topics, records, ACLs, configs, log dirs, partitions,
// leaders, reassignments, quotas, SCRAM, features, cluster description
// and producers.

func createTopicsTopics(r *kmsg.CreateTopicsRequest, t *topicSet) {
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
}

func denyCreateTopics(r *kmsg.CreateTopicsRequest, resp *kmsg.CreateTopicsResponse, d *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewCreateTopicsResponseTopic()
		st.Topic = rt.Topic
		st.ErrorCode, st.ErrorMessage = codeTopicAuth, d.msg
		st.NumPartitions, st.ReplicationFactor = -1, -1
		resp.Topics = append(resp.Topics, st)
	}
	return codeTopicAuth
}

func deleteTopicsTopics(r *kmsg.DeleteTopicsRequest, t *topicSet) {
	t.addAll(r.TopicNames)
	for i := range r.Topics {
		t.refPtr(r.Topics[i].Topic, r.Topics[i].TopicID)
	}
}

func denyDeleteTopics(r *kmsg.DeleteTopicsRequest, resp *kmsg.DeleteTopicsResponse, d *denial) int16 {
	if r.Version <= 5 {
		for _, name := range r.TopicNames {
			st := kmsg.NewDeleteTopicsResponseTopic()
			st.Topic = kmsg.StringPtr(name)
			st.ErrorCode, st.ErrorMessage = codeTopicAuth, d.msg
			resp.Topics = append(resp.Topics, st)
		}
		return codeTopicAuth
	}
	for _, rt := range r.Topics {
		st := kmsg.NewDeleteTopicsResponseTopic()
		st.Topic, st.TopicID = rt.Topic, rt.TopicID
		st.ErrorCode, st.ErrorMessage = codeTopicAuth, d.msg
		resp.Topics = append(resp.Topics, st)
	}
	return codeTopicAuth
}

func deleteRecordsTopics(r *kmsg.DeleteRecordsRequest, t *topicSet) {
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
}

func denyDeleteRecords(r *kmsg.DeleteRecordsRequest, resp *kmsg.DeleteRecordsResponse, _ *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewDeleteRecordsResponseTopic()
		st.Topic = rt.Topic
		for _, rp := range rt.Partitions {
			sp := kmsg.NewDeleteRecordsResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.LowWatermark = -1
			sp.ErrorCode = codeTopicAuth
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return codeTopicAuth
}

// aclTopic adds the topic an ACL resource (or resource filter) names: the
// name of a literal TOPIC resource, or "" for patterns and wildcards that
// can cover any topic (prefixed, match, any, "*" and a null name).
func aclTopic(t *topicSet, typ kmsg.ACLResourceType, name *string, pattern kmsg.ACLResourcePatternType) {
	switch typ {
	case kmsg.ACLResourceTypeTopic:
		if name != nil && *name != "*" && pattern == kmsg.ACLResourcePatternTypeLiteral {
			t.add(*name)
			return
		}
		t.unnamed()
	case kmsg.ACLResourceTypeAny:
		t.unnamed()
	}
}

func describeACLsTopics(r *kmsg.DescribeACLsRequest, t *topicSet) {
	aclTopic(t, r.ResourceType, r.ResourceName, r.ResourcePatternType)
}

func denyDescribeACLs(_ *kmsg.DescribeACLsRequest, resp *kmsg.DescribeACLsResponse, d *denial) int16 {
	resp.ErrorCode, resp.ErrorMessage = codeClusterAuth, d.msg
	return codeClusterAuth
}

func createACLsTopics(r *kmsg.CreateACLsRequest, t *topicSet) {
	for i := range r.Creations {
		c := &r.Creations[i]
		aclTopic(t, c.ResourceType, &c.ResourceName, c.ResourcePatternType)
	}
}

func denyCreateACLs(r *kmsg.CreateACLsRequest, resp *kmsg.CreateACLsResponse, d *denial) int16 {
	for range r.Creations {
		s := kmsg.NewCreateACLsResponseResult()
		s.ErrorCode, s.ErrorMessage = codeClusterAuth, d.msg
		resp.Results = append(resp.Results, s)
	}
	return codeClusterAuth
}

func deleteACLsTopics(r *kmsg.DeleteACLsRequest, t *topicSet) {
	for i := range r.Filters {
		f := &r.Filters[i]
		aclTopic(t, f.ResourceType, f.ResourceName, f.ResourcePatternType)
	}
}

func denyDeleteACLs(r *kmsg.DeleteACLsRequest, resp *kmsg.DeleteACLsResponse, d *denial) int16 {
	for range r.Filters {
		s := kmsg.NewDeleteACLsResponseResult()
		s.ErrorCode, s.ErrorMessage = codeClusterAuth, d.msg
		resp.Results = append(resp.Results, s)
	}
	return codeClusterAuth
}

// configCode is the denial code of a config resource: TOPIC resources
// get the topic code, GROUP_CONFIG the group code, the rest (brokers,
// broker loggers, client metrics) the cluster code.
func configCode(t kmsg.ConfigResourceType) int16 {
	switch t {
	case kmsg.ConfigResourceTypeTopic:
		return codeTopicAuth
	case kmsg.ConfigResourceTypeGroupConfig:
		return codeGroupAuth
	default:
		return codeClusterAuth
	}
}

// configTopic adds the name of a TOPIC config resource.
func configTopic(t *topicSet, typ kmsg.ConfigResourceType, name string) {
	if typ == kmsg.ConfigResourceTypeTopic {
		t.add(name)
	}
}

// summaryCode is the code a denial with per-resource codes is recorded
// with: the topic code when any resource is a topic, else the first
// resource's code, else the cluster code.
func summaryCode(codes []int16) int16 {
	for _, c := range codes {
		if c == codeTopicAuth {
			return c
		}
	}
	if len(codes) > 0 {
		return codes[0]
	}
	return codeClusterAuth
}

func describeConfigsTopics(r *kmsg.DescribeConfigsRequest, t *topicSet) {
	for i := range r.Resources {
		configTopic(t, r.Resources[i].ResourceType, r.Resources[i].ResourceName)
	}
}

func denyDescribeConfigs(r *kmsg.DescribeConfigsRequest, resp *kmsg.DescribeConfigsResponse, d *denial) int16 {
	codes := make([]int16, 0, len(r.Resources))
	for _, rr := range r.Resources {
		s := kmsg.NewDescribeConfigsResponseResource()
		s.ResourceType, s.ResourceName = rr.ResourceType, rr.ResourceName
		s.ErrorCode, s.ErrorMessage = configCode(rr.ResourceType), d.msg
		codes = append(codes, s.ErrorCode)
		resp.Resources = append(resp.Resources, s)
	}
	return summaryCode(codes)
}

func alterConfigsTopics(r *kmsg.AlterConfigsRequest, t *topicSet) {
	for i := range r.Resources {
		configTopic(t, r.Resources[i].ResourceType, r.Resources[i].ResourceName)
	}
}

func denyAlterConfigs(r *kmsg.AlterConfigsRequest, resp *kmsg.AlterConfigsResponse, d *denial) int16 {
	codes := make([]int16, 0, len(r.Resources))
	for _, rr := range r.Resources {
		s := kmsg.NewAlterConfigsResponseResource()
		s.ResourceType, s.ResourceName = rr.ResourceType, rr.ResourceName
		s.ErrorCode, s.ErrorMessage = configCode(rr.ResourceType), d.msg
		codes = append(codes, s.ErrorCode)
		resp.Resources = append(resp.Resources, s)
	}
	return summaryCode(codes)
}

func incrementalAlterConfigsTopics(r *kmsg.IncrementalAlterConfigsRequest, t *topicSet) {
	for i := range r.Resources {
		configTopic(t, r.Resources[i].ResourceType, r.Resources[i].ResourceName)
	}
}

func denyIncrementalAlterConfigs(r *kmsg.IncrementalAlterConfigsRequest, resp *kmsg.IncrementalAlterConfigsResponse, d *denial) int16 {
	codes := make([]int16, 0, len(r.Resources))
	for _, rr := range r.Resources {
		s := kmsg.NewIncrementalAlterConfigsResponseResource()
		s.ResourceType, s.ResourceName = rr.ResourceType, rr.ResourceName
		s.ErrorCode, s.ErrorMessage = configCode(rr.ResourceType), d.msg
		codes = append(codes, s.ErrorCode)
		resp.Resources = append(resp.Resources, s)
	}
	return summaryCode(codes)
}

func alterReplicaLogDirsTopics(r *kmsg.AlterReplicaLogDirsRequest, t *topicSet) {
	for _, dir := range r.Dirs {
		for i := range dir.Topics {
			t.add(dir.Topics[i].Topic)
		}
	}
}

func denyAlterReplicaLogDirs(r *kmsg.AlterReplicaLogDirsRequest, resp *kmsg.AlterReplicaLogDirsResponse, _ *denial) int16 {
	index := map[string]int{}
	for _, dir := range r.Dirs {
		for _, rt := range dir.Topics {
			i, ok := index[rt.Topic]
			if !ok {
				st := kmsg.NewAlterReplicaLogDirsResponseTopic()
				st.Topic = rt.Topic
				i = len(resp.Topics)
				index[rt.Topic] = i
				resp.Topics = append(resp.Topics, st)
			}
			for _, p := range rt.Partitions {
				sp := kmsg.NewAlterReplicaLogDirsResponseTopicPartition()
				sp.Partition = p
				sp.ErrorCode = codeTopicAuth
				resp.Topics[i].Partitions = append(resp.Topics[i].Partitions, sp)
			}
		}
	}
	return codeTopicAuth
}

func describeLogDirsTopics(r *kmsg.DescribeLogDirsRequest, t *topicSet) {
	if r.Topics == nil {
		t.unnamed()
	}
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
}

// denyDescribeLogDirs answers with no log dirs and, from v3 on, a
// top-level CLUSTER_AUTHORIZATION_FAILED (describing log dirs is a
// cluster permission in Kafka).
func denyDescribeLogDirs(_ *kmsg.DescribeLogDirsRequest, resp *kmsg.DescribeLogDirsResponse, _ *denial) int16 {
	resp.ErrorCode = codeClusterAuth
	return codeClusterAuth
}

func createPartitionsTopics(r *kmsg.CreatePartitionsRequest, t *topicSet) {
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
}

func denyCreatePartitions(r *kmsg.CreatePartitionsRequest, resp *kmsg.CreatePartitionsResponse, d *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewCreatePartitionsResponseTopic()
		st.Topic = rt.Topic
		st.ErrorCode, st.ErrorMessage = codeTopicAuth, d.msg
		resp.Topics = append(resp.Topics, st)
	}
	return codeTopicAuth
}

func electLeadersTopics(r *kmsg.ElectLeadersRequest, t *topicSet) {
	if r.Topics == nil {
		t.unnamed()
	}
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
}

func denyElectLeaders(r *kmsg.ElectLeadersRequest, resp *kmsg.ElectLeadersResponse, d *denial) int16 {
	parts := 0
	for _, rt := range r.Topics {
		st := kmsg.NewElectLeadersResponseTopic()
		st.Topic = rt.Topic
		for _, p := range rt.Partitions {
			sp := kmsg.NewElectLeadersResponseTopicPartition()
			sp.Partition = p
			sp.ErrorCode, sp.ErrorMessage = codeTopicAuth, d.msg
			st.Partitions = append(st.Partitions, sp)
		}
		parts += len(st.Partitions)
		resp.Topics = append(resp.Topics, st)
	}
	resp.ErrorCode = topOrEntries(parts, codeClusterAuth)
	if parts > 0 {
		return codeTopicAuth
	}
	return codeClusterAuth
}

func alterPartitionAssignmentsTopics(r *kmsg.AlterPartitionAssignmentsRequest, t *topicSet) {
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
}

func denyAlterPartitionAssignments(r *kmsg.AlterPartitionAssignmentsRequest, resp *kmsg.AlterPartitionAssignmentsResponse, d *denial) int16 {
	parts := 0
	for _, rt := range r.Topics {
		st := kmsg.NewAlterPartitionAssignmentsResponseTopic()
		st.Topic = rt.Topic
		for _, rp := range rt.Partitions {
			sp := kmsg.NewAlterPartitionAssignmentsResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode, sp.ErrorMessage = codeTopicAuth, d.msg
			st.Partitions = append(st.Partitions, sp)
		}
		parts += len(st.Partitions)
		resp.Topics = append(resp.Topics, st)
	}
	resp.AllowReplicationFactorChange = r.AllowReplicationFactorChange
	if resp.ErrorCode = topOrEntries(parts, codeClusterAuth); resp.ErrorCode != 0 {
		resp.ErrorMessage = d.msg
	}
	if parts > 0 {
		return codeTopicAuth
	}
	return codeClusterAuth
}

func listPartitionReassignmentsTopics(r *kmsg.ListPartitionReassignmentsRequest, t *topicSet) {
	if r.Topics == nil {
		t.unnamed()
	}
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
}

// denyListPartitionReassignments has only a top-level error to set: the
// topic code when the request names topics, the cluster code for all.
func denyListPartitionReassignments(r *kmsg.ListPartitionReassignmentsRequest, resp *kmsg.ListPartitionReassignmentsResponse, d *denial) int16 {
	code := codeClusterAuth
	if len(r.Topics) > 0 {
		code = codeTopicAuth
	}
	resp.ErrorCode, resp.ErrorMessage = code, d.msg
	return code
}

func denyAlterClientQuotas(r *kmsg.AlterClientQuotasRequest, resp *kmsg.AlterClientQuotasResponse, d *denial) int16 {
	for _, re := range r.Entries {
		s := kmsg.NewAlterClientQuotasResponseEntry()
		s.ErrorCode, s.ErrorMessage = codeClusterAuth, d.msg
		for _, e := range re.Entity {
			se := kmsg.NewAlterClientQuotasResponseEntryEntity()
			se.Type, se.Name = e.Type, e.Name
			s.Entity = append(s.Entity, se)
		}
		resp.Entries = append(resp.Entries, s)
	}
	return codeClusterAuth
}

func denyDescribeUserSCRAMCredentials(r *kmsg.DescribeUserSCRAMCredentialsRequest, resp *kmsg.DescribeUserSCRAMCredentialsResponse, d *denial) int16 {
	for _, u := range r.Users {
		s := kmsg.NewDescribeUserSCRAMCredentialsResponseResult()
		s.User = u.Name
		s.ErrorCode, s.ErrorMessage = codeClusterAuth, d.msg
		resp.Results = append(resp.Results, s)
	}
	if resp.ErrorCode = topOrEntries(len(resp.Results), codeClusterAuth); resp.ErrorCode != 0 {
		resp.ErrorMessage = d.msg
	}
	return codeClusterAuth
}

func denyAlterUserSCRAMCredentials(r *kmsg.AlterUserSCRAMCredentialsRequest, resp *kmsg.AlterUserSCRAMCredentialsResponse, d *denial) int16 {
	add := func(user string) {
		s := kmsg.NewAlterUserSCRAMCredentialsResponseResult()
		s.User = user
		s.ErrorCode, s.ErrorMessage = codeClusterAuth, d.msg
		resp.Results = append(resp.Results, s)
	}
	for _, del := range r.Deletions {
		add(del.Name)
	}
	for _, up := range r.Upsertions {
		add(up.Name)
	}
	return codeClusterAuth
}

// denyUpdateFeatures answers per feature up to v1 and at the top level
// from v2 on, which has no per-feature results.
func denyUpdateFeatures(r *kmsg.UpdateFeaturesRequest, resp *kmsg.UpdateFeaturesResponse, d *denial) int16 {
	if r.Version >= 2 {
		resp.ErrorCode, resp.ErrorMessage = codeClusterAuth, d.msg
		return codeClusterAuth
	}
	for _, f := range r.FeatureUpdates {
		s := kmsg.NewUpdateFeaturesResponseResult()
		s.Feature = f.Feature
		s.ErrorCode, s.ErrorMessage = codeClusterAuth, d.msg
		resp.Results = append(resp.Results, s)
	}
	if resp.ErrorCode = topOrEntries(len(resp.Results), codeClusterAuth); resp.ErrorCode != 0 {
		resp.ErrorMessage = d.msg
	}
	return codeClusterAuth
}

func denyDescribeCluster(r *kmsg.DescribeClusterRequest, resp *kmsg.DescribeClusterResponse, d *denial) int16 {
	resp.ErrorCode, resp.ErrorMessage = codeClusterAuth, d.msg
	resp.EndpointType = r.EndpointType
	resp.ControllerID = -1
	return codeClusterAuth
}

func describeProducersTopics(r *kmsg.DescribeProducersRequest, t *topicSet) {
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
}

func denyDescribeProducers(r *kmsg.DescribeProducersRequest, resp *kmsg.DescribeProducersResponse, d *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewDescribeProducersResponseTopic()
		st.Topic = rt.Topic
		for _, p := range rt.Partitions {
			sp := kmsg.NewDescribeProducersResponseTopicPartition()
			sp.Partition = p
			sp.ErrorCode, sp.ErrorMessage = codeTopicAuth, d.msg
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return codeTopicAuth
}
