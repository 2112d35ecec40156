package kafka

import (
	"fmt"
	"reflect"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// Kafka error codes of denials.
const (
	codeTopicAuth   int16 = 29 // TOPIC_AUTHORIZATION_FAILED
	codeGroupAuth   int16 = 30 // GROUP_AUTHORIZATION_FAILED
	codeClusterAuth int16 = 31 // CLUSTER_AUTHORIZATION_FAILED
	codeTxnAuth     int16 = 53 // TRANSACTIONAL_ID_AUTHORIZATION_FAILED
	// codeUnsupportedVersion answers an ApiVersions request newer than
	// the inspector knows.
	codeUnsupportedVersion int16 = 35 // UNSUPPORTED_VERSION
)

// denial is what a deny function needs besides the request and response.
type denial struct {
	// msg fills ErrorMessage fields: "palisade: " and the verdict's reason.
	msg *string
	// session holds the partitions of the fetch session a denied
	// incremental Fetch continues, so that they are echoed too.
	session map[topicKey][]int32
	// meta is the broker's answer to the brokers-only Metadata request
	// the inspector sent in place of a denied Metadata request.
	meta *kmsg.MetadataResponse
}

// api is how the inspector handles one request key.
type api struct {
	// topics adds the topics a decoded request carries; nil when the
	// key carries none.
	topics func(kmsg.Request, *topicSet)
	// deny fills resp, the empty response of the request's kind and
	// version, with authorization errors and returns the error code the
	// denial is recorded with.
	deny func(kmsg.Request, kmsg.Response, *denial) int16
}

// entry builds a typed api entry.
func entry[Q kmsg.Request, R kmsg.Response](topics func(Q, *topicSet), deny func(Q, R, *denial) int16) api {
	a := api{deny: func(q kmsg.Request, r kmsg.Response, d *denial) int16 { return deny(q.(Q), r.(R), d) }}
	if topics != nil {
		a.topics = func(q kmsg.Request, t *topicSet) { topics(q.(Q), t) }
	}
	return a
}

// noTopics builds an api entry for a key that carries no topics.
func noTopics[Q kmsg.Request, R kmsg.Response](deny func(Q, R, *denial) int16) api {
	return entry[Q, R](nil, deny)
}

// topLevel builds an api entry for a key without topics whose response
// carries its error only in the top-level ErrorCode (and ErrorMessage,
// where the version has one).
func topLevel(code int16) api {
	return api{deny: func(_ kmsg.Request, r kmsg.Response, d *denial) int16 {
		setTopLevel(r, code, d.msg)
		return code
	}}
}

// setTopLevel sets the ErrorCode and, when present, ErrorMessage fields
// of a kmsg response struct. It panics when the response has no ErrorCode,
// which TestEveryKeyDenies would catch for every key in the table.
func setTopLevel(r kmsg.Response, code int16, msg *string) {
	v := reflect.ValueOf(r).Elem()
	f := v.FieldByName("ErrorCode")
	if !f.IsValid() || f.Kind() != reflect.Int16 {
		panic(fmt.Sprintf("kafka: %T has no ErrorCode", r))
	}
	f.SetInt(int64(code))
	if m := v.FieldByName("ErrorMessage"); m.IsValid() && m.Type() == reflect.TypeFor[*string]() {
		m.Set(reflect.ValueOf(msg))
	}
}

// topOrEntries is the code of a top-level ErrorCode whose entries may
// carry the error instead: 0 when they do, code otherwise.
func topOrEntries(entries int, code int16) int16 {
	if entries > 0 {
		return 0
	}
	return code
}

// apis is indexed by request key. It covers every key kmsg knows
// (TestTableCoversKmsg).
var apis = [...]api{
	kmsg.Produce:                               entry(produceTopics, denyProduce),
	kmsg.Fetch:                                 entry(fetchTopics, denyFetch),
	kmsg.ListOffsets:                           entry(listOffsetsTopics, denyListOffsets),
	kmsg.Metadata:                              entry(metadataTopics, denyMetadata),
	kmsg.LeaderAndISR:                          entry(leaderAndISRTopics, denyLeaderAndISR),
	kmsg.StopReplica:                           entry(stopReplicaTopics, denyStopReplica),
	kmsg.UpdateMetadata:                        entry(updateMetadataTopics, denyUpdateMetadata),
	kmsg.ControlledShutdown:                    topLevel(codeClusterAuth),
	kmsg.OffsetCommit:                          entry(offsetCommitTopics, denyOffsetCommit),
	kmsg.OffsetFetch:                           entry(offsetFetchTopics, denyOffsetFetch),
	kmsg.FindCoordinator:                       noTopics(denyFindCoordinator),
	kmsg.JoinGroup:                             noTopics(denyJoinGroup),
	kmsg.Heartbeat:                             topLevel(codeGroupAuth),
	kmsg.LeaveGroup:                            noTopics(denyLeaveGroup),
	kmsg.SyncGroup:                             topLevel(codeGroupAuth),
	kmsg.DescribeGroups:                        noTopics(denyDescribeGroups),
	kmsg.ListGroups:                            topLevel(codeClusterAuth),
	kmsg.SASLHandshake:                         topLevel(codeClusterAuth),
	kmsg.ApiVersions:                           topLevel(codeClusterAuth),
	kmsg.CreateTopics:                          entry(createTopicsTopics, denyCreateTopics),
	kmsg.DeleteTopics:                          entry(deleteTopicsTopics, denyDeleteTopics),
	kmsg.DeleteRecords:                         entry(deleteRecordsTopics, denyDeleteRecords),
	kmsg.InitProducerID:                        noTopics(denyInitProducerID),
	kmsg.OffsetForLeaderEpoch:                  entry(offsetForLeaderEpochTopics, denyOffsetForLeaderEpoch),
	kmsg.AddPartitionsToTxn:                    entry(addPartitionsToTxnTopics, denyAddPartitionsToTxn),
	kmsg.AddOffsetsToTxn:                       topLevel(codeTxnAuth),
	kmsg.EndTxn:                                noTopics(denyEndTxn),
	kmsg.WriteTxnMarkers:                       entry(writeTxnMarkersTopics, denyWriteTxnMarkers),
	kmsg.TxnOffsetCommit:                       entry(txnOffsetCommitTopics, denyTxnOffsetCommit),
	kmsg.DescribeACLs:                          entry(describeACLsTopics, denyDescribeACLs),
	kmsg.CreateACLs:                            entry(createACLsTopics, denyCreateACLs),
	kmsg.DeleteACLs:                            entry(deleteACLsTopics, denyDeleteACLs),
	kmsg.DescribeConfigs:                       entry(describeConfigsTopics, denyDescribeConfigs),
	kmsg.AlterConfigs:                          entry(alterConfigsTopics, denyAlterConfigs),
	kmsg.AlterReplicaLogDirs:                   entry(alterReplicaLogDirsTopics, denyAlterReplicaLogDirs),
	kmsg.DescribeLogDirs:                       entry(describeLogDirsTopics, denyDescribeLogDirs),
	kmsg.SASLAuthenticate:                      topLevel(codeClusterAuth),
	kmsg.CreatePartitions:                      entry(createPartitionsTopics, denyCreatePartitions),
	kmsg.CreateDelegationToken:                 topLevel(codeClusterAuth),
	kmsg.RenewDelegationToken:                  topLevel(codeClusterAuth),
	kmsg.ExpireDelegationToken:                 topLevel(codeClusterAuth),
	kmsg.DescribeDelegationToken:               topLevel(codeClusterAuth),
	kmsg.DeleteGroups:                          noTopics(denyDeleteGroups),
	kmsg.ElectLeaders:                          entry(electLeadersTopics, denyElectLeaders),
	kmsg.IncrementalAlterConfigs:               entry(incrementalAlterConfigsTopics, denyIncrementalAlterConfigs),
	kmsg.AlterPartitionAssignments:             entry(alterPartitionAssignmentsTopics, denyAlterPartitionAssignments),
	kmsg.ListPartitionReassignments:            entry(listPartitionReassignmentsTopics, denyListPartitionReassignments),
	kmsg.OffsetDelete:                          entry(offsetDeleteTopics, denyOffsetDelete),
	kmsg.DescribeClientQuotas:                  topLevel(codeClusterAuth),
	kmsg.AlterClientQuotas:                     noTopics(denyAlterClientQuotas),
	kmsg.DescribeUserSCRAMCredentials:          noTopics(denyDescribeUserSCRAMCredentials),
	kmsg.AlterUserSCRAMCredentials:             noTopics(denyAlterUserSCRAMCredentials),
	kmsg.Vote:                                  entry(voteTopics, denyVote),
	kmsg.BeginQuorumEpoch:                      entry(beginQuorumEpochTopics, denyBeginQuorumEpoch),
	kmsg.EndQuorumEpoch:                        entry(endQuorumEpochTopics, denyEndQuorumEpoch),
	kmsg.DescribeQuorum:                        entry(describeQuorumTopics, denyDescribeQuorum),
	kmsg.AlterPartition:                        entry(alterPartitionTopics, denyAlterPartition),
	kmsg.UpdateFeatures:                        noTopics(denyUpdateFeatures),
	kmsg.Envelope:                              topLevel(codeClusterAuth),
	kmsg.FetchSnapshot:                         entry(fetchSnapshotTopics, denyFetchSnapshot),
	kmsg.DescribeCluster:                       noTopics(denyDescribeCluster),
	kmsg.DescribeProducers:                     entry(describeProducersTopics, denyDescribeProducers),
	kmsg.BrokerRegistration:                    topLevel(codeClusterAuth),
	kmsg.BrokerHeartbeat:                       topLevel(codeClusterAuth),
	kmsg.UnregisterBroker:                      topLevel(codeClusterAuth),
	kmsg.DescribeTransactions:                  noTopics(denyDescribeTransactions),
	kmsg.ListTransactions:                      topLevel(codeClusterAuth),
	kmsg.AllocateProducerIDs:                   topLevel(codeClusterAuth),
	kmsg.ConsumerGroupHeartbeat:                entry(consumerGroupHeartbeatTopics, denyConsumerGroupHeartbeat),
	kmsg.ConsumerGroupDescribe:                 noTopics(denyConsumerGroupDescribe),
	kmsg.ControllerRegistration:                topLevel(codeClusterAuth),
	kmsg.GetTelemetrySubscriptions:             topLevel(codeClusterAuth),
	kmsg.PushTelemetry:                         topLevel(codeClusterAuth),
	kmsg.AssignReplicasToDirs:                  entry(assignReplicasToDirsTopics, denyAssignReplicasToDirs),
	kmsg.ListConfigResources:                   topLevel(codeClusterAuth),
	kmsg.DescribeTopicPartitions:               entry(describeTopicPartitionsTopics, denyDescribeTopicPartitions),
	kmsg.ShareGroupHeartbeat:                   entry(shareGroupHeartbeatTopics, denyShareGroupHeartbeat),
	kmsg.ShareGroupDescribe:                    noTopics(denyShareGroupDescribe),
	kmsg.ShareFetch:                            entry(shareFetchTopics, denyShareFetch),
	kmsg.ShareAcknowledge:                      entry(shareAcknowledgeTopics, denyShareAcknowledge),
	kmsg.AddRaftVoter:                          topLevel(codeClusterAuth),
	kmsg.RemoveRaftVoter:                       topLevel(codeClusterAuth),
	kmsg.UpdateRaftVoter:                       topLevel(codeClusterAuth),
	kmsg.InitializeShareGroupState:             entry(initializeShareGroupStateTopics, denyInitializeShareGroupState),
	kmsg.ReadShareGroupState:                   entry(readShareGroupStateTopics, denyReadShareGroupState),
	kmsg.WriteShareGroupState:                  entry(writeShareGroupStateTopics, denyWriteShareGroupState),
	kmsg.DeleteShareGroupState:                 entry(deleteShareGroupStateTopics, denyDeleteShareGroupState),
	kmsg.ReadShareGroupStateSummary:            entry(readShareGroupStateSummaryTopics, denyReadShareGroupStateSummary),
	kmsg.StreamsGroupHeartbeat:                 entry(streamsGroupHeartbeatTopics, denyStreamsGroupHeartbeat),
	kmsg.StreamsGroupDescribe:                  noTopics(denyStreamsGroupDescribe),
	kmsg.DescribeShareGroupOffsets:             entry(describeShareGroupOffsetsTopics, denyDescribeShareGroupOffsets),
	kmsg.AlterShareGroupOffsets:                entry(alterShareGroupOffsetsTopics, denyAlterShareGroupOffsets),
	kmsg.DeleteShareGroupOffsets:               entry(deleteShareGroupOffsetsTopics, denyDeleteShareGroupOffsets),
	kmsg.StreamsGroupTopologyDescriptionUpdate: entry(streamsGroupTopologyDescriptionUpdateTopics, denyStreamsGroupTopologyDescriptionUpdate),
	kmsg.UnregisterController:                  topLevel(codeClusterAuth),
}

// lookupAPI returns the entry for key, or false for keys kmsg does not
// know.
func lookupAPI(key int16) (api, bool) {
	if key < 0 || int(key) >= len(apis) || apis[key].deny == nil {
		return api{}, false
	}
	return apis[key], true
}
