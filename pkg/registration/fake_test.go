package registration

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"sync"
	"testing"

	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// fakeServer is an in-memory entry API with the semantics the reconciler
// relies on: parent/hint filters, paging by entry ID, AlreadyExists for a
// similar entry, NotFound on update/delete of a missing ID.
type fakeServer struct {
	entryv1.EntryClient // methods not used by the reconciler panic

	mu      sync.Mutex
	entries map[string]*types.Entry
	next    int
	maxPage int // server-side page size cap; 0: none
	// failList makes the next N ListEntries calls fail with Unavailable.
	failList int
	// rejectCreate answers Internal for creates of these SPIFFE IDs.
	rejectCreate map[string]bool
	// hidden entry IDs are left out of listings (a race with another
	// writer).
	hidden map[string]bool
	calls  []string
}

func newFakeServer() *fakeServer {
	return &fakeServer{entries: map[string]*types.Entry{}, rejectCreate: map[string]bool{}, hidden: map[string]bool{}}
}

func (s *fakeServer) call(format string, a ...any) {
	s.calls = append(s.calls, fmt.Sprintf(format, a...))
}

// takeCalls returns and forgets the calls made so far.
func (s *fakeServer) takeCalls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.calls
	s.calls = nil
	return c
}

// add stores an entry directly (as another writer would) and returns its ID.
func (s *fakeServer) add(e *types.Entry) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addLocked(e)
}

func (s *fakeServer) addLocked(e *types.Entry) string {
	e = proto.Clone(e).(*types.Entry)
	if e.Id == "" {
		s.next++
		e.Id = fmt.Sprintf("e%04d", s.next)
	}
	e.RevisionNumber = 0
	s.entries[e.Id] = e
	return e.Id
}

func (s *fakeServer) remove(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.entries, id)
}

// snapshot returns all entries sorted by ID.
func (s *fakeServer) snapshot() []*types.Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*types.Entry
	for _, e := range s.entries {
		out = append(out, proto.Clone(e).(*types.Entry))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return out
}

func (s *fakeServer) ListEntries(ctx context.Context, in *entryv1.ListEntriesRequest, _ ...grpc.CallOption) (*entryv1.ListEntriesResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.call("list")
	if s.failList > 0 {
		s.failList--
		return nil, status.Error(codes.Unavailable, "connection refused")
	}
	var ids []string
	for id, e := range s.entries {
		if s.hidden[id] {
			continue
		}
		if f := in.GetFilter().GetByParentId(); f != nil && idString(f) != idString(e.ParentId) {
			continue
		}
		if f := in.GetFilter().GetByHint(); f != nil && f.GetValue() != e.Hint {
			continue
		}
		if in.PageToken != "" && id <= in.PageToken {
			continue
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	size := int(in.PageSize)
	if s.maxPage > 0 && (size == 0 || size > s.maxPage) {
		size = s.maxPage
	}
	resp := &entryv1.ListEntriesResponse{}
	if size > 0 && len(ids) > size {
		ids = ids[:size]
		resp.NextPageToken = ids[size-1]
	}
	for _, id := range ids {
		resp.Entries = append(resp.Entries, proto.Clone(s.entries[id]).(*types.Entry))
	}
	return resp, nil
}

func (s *fakeServer) BatchCreateEntry(ctx context.Context, in *entryv1.BatchCreateEntryRequest, _ ...grpc.CallOption) (*entryv1.BatchCreateEntryResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.call("create:%d", len(in.Entries))
	resp := &entryv1.BatchCreateEntryResponse{}
	for _, e := range in.Entries {
		if s.rejectCreate[idString(e.SpiffeId)] {
			resp.Results = append(resp.Results, &entryv1.BatchCreateEntryResponse_Result{Status: &types.Status{Code: int32(codes.Internal), Message: "datastore on fire"}})
			continue
		}
		var similar *types.Entry
		for _, have := range s.entries {
			if key(have) == key(e) {
				similar = have
			}
		}
		if similar != nil {
			resp.Results = append(resp.Results, &entryv1.BatchCreateEntryResponse_Result{
				Status: &types.Status{Code: int32(codes.AlreadyExists), Message: "similar entry already exists"},
				Entry:  proto.Clone(similar).(*types.Entry),
			})
			continue
		}
		id := s.addLocked(e)
		resp.Results = append(resp.Results, &entryv1.BatchCreateEntryResponse_Result{Status: &types.Status{}, Entry: proto.Clone(s.entries[id]).(*types.Entry)})
	}
	return resp, nil
}

func (s *fakeServer) BatchUpdateEntry(ctx context.Context, in *entryv1.BatchUpdateEntryRequest, _ ...grpc.CallOption) (*entryv1.BatchUpdateEntryResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.call("update:%d", len(in.Entries))
	m := in.InputMask
	resp := &entryv1.BatchUpdateEntryResponse{}
	for _, u := range in.Entries {
		e := s.entries[u.Id]
		if e == nil {
			resp.Results = append(resp.Results, &entryv1.BatchUpdateEntryResponse_Result{Status: &types.Status{Code: int32(codes.NotFound), Message: "entry not found"}})
			continue
		}
		if m == nil || m.X509SvidTtl {
			e.X509SvidTtl = u.X509SvidTtl
		}
		if m == nil || m.JwtSvidTtl {
			e.JwtSvidTtl = u.JwtSvidTtl
		}
		if m == nil || m.Admin {
			e.Admin = u.Admin
		}
		if m == nil || m.Downstream {
			e.Downstream = u.Downstream
		}
		if m == nil || m.ExpiresAt {
			e.ExpiresAt = u.ExpiresAt
		}
		if m == nil || m.StoreSvid {
			e.StoreSvid = u.StoreSvid
		}
		if m == nil || m.DnsNames {
			e.DnsNames = u.DnsNames
		}
		if m == nil || m.FederatesWith {
			e.FederatesWith = u.FederatesWith
		}
		if m == nil || m.Hint {
			e.Hint = u.Hint
		}
		if m == nil || m.Selectors {
			e.Selectors = u.Selectors
		}
		if m == nil || m.SpiffeId {
			e.SpiffeId = u.SpiffeId
		}
		if m == nil || m.ParentId {
			e.ParentId = u.ParentId
		}
		e.RevisionNumber++
		resp.Results = append(resp.Results, &entryv1.BatchUpdateEntryResponse_Result{Status: &types.Status{}, Entry: proto.Clone(e).(*types.Entry)})
	}
	return resp, nil
}

func (s *fakeServer) BatchDeleteEntry(ctx context.Context, in *entryv1.BatchDeleteEntryRequest, _ ...grpc.CallOption) (*entryv1.BatchDeleteEntryResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.call("delete:%d", len(in.Ids))
	resp := &entryv1.BatchDeleteEntryResponse{}
	for _, id := range in.Ids {
		st := &types.Status{}
		if s.entries[id] == nil {
			st = &types.Status{Code: int32(codes.NotFound), Message: "entry not found"}
		}
		delete(s.entries, id)
		resp.Results = append(resp.Results, &entryv1.BatchDeleteEntryResponse_Result{Id: id, Status: st})
	}
	return resp, nil
}

// testLogger writes the reconciler's log into the test's output.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

var _ io.Writer = tWriter{}

// entryID is a short helper for building API SPIFFE IDs in tests.
func apiID(s string) *types.SPIFFEID {
	// "spiffe://td/path"
	const scheme = "spiffe://"
	rest := s[len(scheme):]
	i := 0
	for i < len(rest) && rest[i] != '/' {
		i++
	}
	return &types.SPIFFEID{TrustDomain: rest[:i], Path: rest[i:]}
}

func itoa(i int) string { return strconv.Itoa(i) }
