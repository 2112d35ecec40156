package kafka

import "github.com/twmb/franz-go/pkg/kmsg"

// Transactions: transactional ids are refused with
// TRANSACTIONAL_ID_AUTHORIZATION_FAILED, their partitions with
// TOPIC_AUTHORIZATION_FAILED. (AddOffsetsToTxn and ListTransactions only
// have a top-level error; see the table.)

// denyInitProducerID refuses a transactional id with
// TRANSACTIONAL_ID_AUTHORIZATION_FAILED and an idempotent producer (no
// transactional id, a cluster-level permission in Kafka) with
// CLUSTER_AUTHORIZATION_FAILED.
func denyInitProducerID(r *kmsg.InitProducerIDRequest, resp *kmsg.InitProducerIDResponse, _ *denial) int16 {
	code := codeClusterAuth
	if r.TransactionalID != nil {
		code = codeTxnAuth
	}
	resp.ErrorCode = code
	resp.ProducerID, resp.ProducerEpoch = -1, -1
	return code
}

func addPartitionsToTxnTopics(r *kmsg.AddPartitionsToTxnRequest, t *topicSet) {
	for i := range r.Topics {
		t.add(r.Topics[i].Topic)
	}
	for _, tx := range r.Transactions {
		for i := range tx.Topics {
			t.add(tx.Topics[i].Topic)
		}
	}
}

func denyAddPartitionsToTxn(r *kmsg.AddPartitionsToTxnRequest, resp *kmsg.AddPartitionsToTxnResponse, _ *denial) int16 {
	parts := 0
	if r.Version <= 3 {
		for _, rt := range r.Topics {
			st := kmsg.NewAddPartitionsToTxnResponseTopic()
			st.Topic = rt.Topic
			for _, p := range rt.Partitions {
				sp := kmsg.NewAddPartitionsToTxnResponseTopicPartition()
				sp.Partition = p
				sp.ErrorCode = codeTopicAuth
				st.Partitions = append(st.Partitions, sp)
			}
			parts += len(st.Partitions)
			resp.Topics = append(resp.Topics, st)
		}
	} else {
		for _, tx := range r.Transactions {
			stx := kmsg.NewAddPartitionsToTxnResponseTransaction()
			stx.TransactionalID = tx.TransactionalID
			for _, rt := range tx.Topics {
				st := kmsg.NewAddPartitionsToTxnResponseTransactionTopic()
				st.Topic = rt.Topic
				for _, p := range rt.Partitions {
					sp := kmsg.NewAddPartitionsToTxnResponseTransactionTopicPartition()
					sp.Partition = p
					sp.ErrorCode = codeTopicAuth
					st.Partitions = append(st.Partitions, sp)
				}
				parts += len(st.Partitions)
				stx.Topics = append(stx.Topics, st)
			}
			resp.Transactions = append(resp.Transactions, stx)
		}
		resp.ErrorCode = topOrEntries(parts, codeTxnAuth)
	}
	if parts > 0 {
		return codeTopicAuth
	}
	return codeTxnAuth
}

func denyEndTxn(_ *kmsg.EndTxnRequest, resp *kmsg.EndTxnResponse, _ *denial) int16 {
	resp.ErrorCode = codeTxnAuth
	resp.ProducerID, resp.ProducerEpoch = -1, -1
	return codeTxnAuth
}

func txnOffsetCommitTopics(r *kmsg.TxnOffsetCommitRequest, t *topicSet) {
	for i := range r.Topics {
		t.ref(r.Topics[i].Topic, r.Topics[i].TopicID)
	}
}

func denyTxnOffsetCommit(r *kmsg.TxnOffsetCommitRequest, resp *kmsg.TxnOffsetCommitResponse, _ *denial) int16 {
	for _, rt := range r.Topics {
		st := kmsg.NewTxnOffsetCommitResponseTopic()
		st.Topic, st.TopicID = rt.Topic, rt.TopicID
		for _, rp := range rt.Partitions {
			sp := kmsg.NewTxnOffsetCommitResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode = codeTopicAuth
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	if len(resp.Topics) > 0 {
		return codeTopicAuth
	}
	return codeTxnAuth
}

func denyDescribeTransactions(r *kmsg.DescribeTransactionsRequest, resp *kmsg.DescribeTransactionsResponse, _ *denial) int16 {
	for _, id := range r.TransactionalIDs {
		s := kmsg.NewDescribeTransactionsResponseTransactionState()
		s.TransactionalID = id
		s.ErrorCode = codeTxnAuth
		s.ProducerID, s.ProducerEpoch = -1, -1
		resp.TransactionStates = append(resp.TransactionStates, s)
	}
	return codeTxnAuth
}
