package kafka

import "github.com/twmb/franz-go/pkg/kmsg"

// idOnlyFrom lists the requests that name topics only by id from some
// version on, with that version. The inspector lowers the maximum version
// the broker advertises for them to the version before, so that clients
// keep naming topics (see the package documentation).
var idOnlyFrom = [...]struct{ key, version int16 }{
	{int16(kmsg.Produce), 13},
	{int16(kmsg.Fetch), 13},
	{int16(kmsg.OffsetCommit), 10},
	{int16(kmsg.OffsetFetch), 10},
	{int16(kmsg.TxnOffsetCommit), 6},
	{int16(kmsg.AlterPartition), 2},
}

// capVersions lowers, in an ApiVersions response, the maximum version of
// each request in idOnlyFrom to the last version that carries topic
// names, when the broker also supports that version. It reports whether
// it changed anything.
func capVersions(resp *kmsg.ApiVersionsResponse) bool {
	changed := false
	for i := range resp.ApiKeys {
		k := &resp.ApiKeys[i]
		for _, c := range idOnlyFrom {
			if k.ApiKey == c.key && k.MaxVersion >= c.version && k.MinVersion < c.version {
				k.MaxVersion = c.version - 1
				changed = true
			}
		}
	}
	return changed
}

// rewriteAPIVersions returns the ApiVersions response frame (size prefix
// included) with capped versions, or nil when frame should be relayed as
// is: it does not decode at the request's version (a broker answers a
// version it does not know with a v0 error response), it carries an
// error, or nothing needs capping. body is frame's body.
func rewriteAPIVersions(corr int32, version int16, body []byte) []byte {
	resp := kmsg.NewPtrApiVersionsResponse()
	resp.Version = version
	if decodeBody(resp, body) != nil || resp.ErrorCode != 0 || !capVersions(resp) {
		return nil
	}
	return appendResponse(nil, corr, resp)
}

// negotiateDown is the answer to an ApiVersions request at a version
// newer than kmsg knows, as a broker gives it: a v0 response with
// UNSUPPORTED_VERSION and the ApiVersions versions the inspector reads,
// after which clients retry at the highest version both sides know.
func negotiateDown(corr int32) []byte {
	resp := kmsg.NewPtrApiVersionsResponse()
	resp.Version = 0
	resp.ErrorCode = codeUnsupportedVersion
	k := kmsg.NewApiVersionsResponseApiKey()
	k.ApiKey, k.MinVersion, k.MaxVersion = int16(kmsg.ApiVersions), 0, kmsg.NewPtrApiVersionsRequest().MaxVersion()
	resp.ApiKeys = []kmsg.ApiVersionsResponseApiKey{k}
	return appendResponse(nil, corr, resp)
}
