package policy

import (
	"strconv"
	"strings"
)

// kafkaAPINames are the Kafka request keys by number, as the protocol
// names them.
var kafkaAPINames = [...]string{
	"Produce", "Fetch", "ListOffsets", "Metadata", "LeaderAndIsr", "StopReplica",
	"UpdateMetadata", "ControlledShutdown", "OffsetCommit", "OffsetFetch",
	"FindCoordinator", "JoinGroup", "Heartbeat", "LeaveGroup", "SyncGroup",
	"DescribeGroups", "ListGroups", "SaslHandshake", "ApiVersions", "CreateTopics",
	"DeleteTopics", "DeleteRecords", "InitProducerId", "OffsetForLeaderEpoch",
	"AddPartitionsToTxn", "AddOffsetsToTxn", "EndTxn", "WriteTxnMarkers",
	"TxnOffsetCommit", "DescribeAcls", "CreateAcls", "DeleteAcls", "DescribeConfigs",
	"AlterConfigs", "AlterReplicaLogDirs", "DescribeLogDirs", "SaslAuthenticate",
	"CreatePartitions", "CreateDelegationToken", "RenewDelegationToken",
	"ExpireDelegationToken", "DescribeDelegationToken", "DeleteGroups", "ElectLeaders",
	"IncrementalAlterConfigs", "AlterPartitionReassignments",
	"ListPartitionReassignments", "OffsetDelete", "DescribeClientQuotas",
	"AlterClientQuotas", "DescribeUserScramCredentials", "AlterUserScramCredentials",
	"Vote", "BeginQuorumEpoch", "EndQuorumEpoch", "DescribeQuorum", "AlterPartition",
	"UpdateFeatures", "Envelope", "FetchSnapshot", "DescribeCluster",
	"DescribeProducers", "BrokerRegistration", "BrokerHeartbeat", "UnregisterBroker",
	"DescribeTransactions", "ListTransactions", "AllocateProducerIds",
	"ConsumerGroupHeartbeat", "ConsumerGroupDescribe", "ControllerRegistration",
	"GetTelemetrySubscriptions", "PushTelemetry", "AssignReplicasToDirs",
	"ListClientMetricsResources", "DescribeTopicPartitions",
}

// kafkaAPIName names a key for reasons ("Produce", or the number).
func kafkaAPIName(key int16) string {
	if key >= 0 && int(key) < len(kafkaAPINames) {
		return kafkaAPINames[key]
	}
	return "ApiKey " + strconv.Itoa(int(key))
}

// ParseKafkaAPIKey accepts a key by number or by name, case-insensitively:
// the protocol's names ("ListOffsets") and Cilium's ("offsets", ...).
func ParseKafkaAPIKey(s string) (int16, bool) {
	if n, err := strconv.ParseInt(s, 10, 16); err == nil {
		return int16(n), n >= 0
	}
	l := strings.ToLower(s)
	if l == "offsets" { // Cilium's name for ListOffsets
		return 2, true
	}
	for i, n := range kafkaAPINames {
		if strings.ToLower(n) == l {
			return int16(i), true
		}
	}
	return 0, false
}

// Kafka roles, as Cilium expands them.
var (
	kafkaProduceKeys = []int16{0, 3, 18}
	kafkaConsumeKeys = []int16{1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18}
)
