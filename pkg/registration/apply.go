package registration

import (
	"context"
	"errors"
	"fmt"

	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
)

// list returns every entry whose parent ID is the node's, all pages.
func (r *Reconciler) list(ctx context.Context) ([]*types.Entry, error) {
	req := &entryv1.ListEntriesRequest{
		Filter:   &entryv1.ListEntriesRequest_Filter{ByParentId: protoID(r.cfg.ParentID)},
		PageSize: int32(min(r.cfg.PageSize, 1<<30)),
	}
	var out []*types.Entry
	seen := map[string]bool{}
	for page := 1; ; page++ {
		cctx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
		resp, err := r.cfg.Client.ListEntries(cctx, req)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("list SPIRE entries under %s (page %d): %w", r.cfg.ParentID, page, err)
		}
		out = append(out, resp.GetEntries()...)
		next := resp.GetNextPageToken()
		if next == "" {
			return out, nil
		}
		if seen[next] {
			return nil, fmt.Errorf("list SPIRE entries under %s: the server repeated page token %q", r.cfg.ParentID, next)
		}
		seen[next] = true
		req.PageToken = next
	}
}

// apply carries out p in batches: updates, then creates (a pod changing
// service account gets its new identity before the old one goes), then
// deletes.
func (r *Reconciler) apply(ctx context.Context, p plan) (Result, error) {
	res := Result{Unchanged: len(p.unchanged), Foreign: len(p.foreign)}
	var errs []error
	for _, b := range batches(p.update, r.cfg.BatchSize) {
		n, err := r.updateBatch(ctx, b)
		res.Updated += n
		errs = append(errs, err)
	}
	for _, b := range batches(p.create, r.cfg.BatchSize) {
		n, err := r.createBatch(ctx, b)
		res.Created += n
		errs = append(errs, err)
	}
	for _, b := range batches(p.delete, r.cfg.BatchSize) {
		n, err := r.deleteBatch(ctx, b)
		res.Deleted += n
		errs = append(errs, err)
	}
	return res, errors.Join(errs...)
}

func batches(es []*types.Entry, size int) [][]*types.Entry {
	var out [][]*types.Entry
	for len(es) > 0 {
		n := min(size, len(es))
		out = append(out, es[:n])
		es = es[n:]
	}
	return out
}

func spiffeIDs(es []*types.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = idString(e.GetSpiffeId())
	}
	return out
}

func (r *Reconciler) createBatch(ctx context.Context, es []*types.Entry) (int, error) {
	ids := spiffeIDs(es)
	cctx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
	defer cancel()
	resp, err := r.cfg.Client.BatchCreateEntry(cctx, &entryv1.BatchCreateEntryRequest{Entries: es})
	if err != nil {
		r.log.Error("creating SPIRE registration entries failed", "count", len(es), "spiffe_ids", ids, "error", err)
		return 0, fmt.Errorf("create %d SPIRE entries: %w", len(es), err)
	}
	results := resp.GetResults()
	if len(results) != len(es) {
		return 0, fmt.Errorf("create %d SPIRE entries: the server answered %d results", len(es), len(results))
	}
	var created, existed, entryIDs []string
	var errs []error
	for i, res := range results {
		switch code := codes.Code(res.GetStatus().GetCode()); code {
		case codes.OK:
			created = append(created, ids[i])
			entryIDs = append(entryIDs, res.GetEntry().GetId())
		case codes.AlreadyExists:
			// A similar entry (same SPIFFE ID, parent, selectors) appeared
			// since the listing: the need is met.
			existed = append(existed, ids[i])
		default:
			r.log.Error("creating SPIRE registration entry failed", "spiffe_id", ids[i], "code", code.String(), "message", res.GetStatus().GetMessage())
			errs = append(errs, fmt.Errorf("create SPIRE entry %s: %s: %s", ids[i], code, res.GetStatus().GetMessage()))
		}
	}
	if len(created) > 0 {
		r.log.Info("created SPIRE registration entries", "count", len(created), "spiffe_ids", created, "entry_ids", entryIDs)
	}
	if len(existed) > 0 {
		r.log.Info("SPIRE registration entries already existed", "count", len(existed), "spiffe_ids", existed)
	}
	return len(created), errors.Join(errs...)
}

func (r *Reconciler) updateBatch(ctx context.Context, es []*types.Entry) (int, error) {
	ids := spiffeIDs(es)
	cctx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
	defer cancel()
	resp, err := r.cfg.Client.BatchUpdateEntry(cctx, &entryv1.BatchUpdateEntryRequest{Entries: es, InputMask: updateMask})
	if err != nil {
		r.log.Error("updating SPIRE registration entries failed", "count", len(es), "spiffe_ids", ids, "error", err)
		return 0, fmt.Errorf("update %d SPIRE entries: %w", len(es), err)
	}
	results := resp.GetResults()
	if len(results) != len(es) {
		return 0, fmt.Errorf("update %d SPIRE entries: the server answered %d results", len(es), len(results))
	}
	var updated, entryIDs []string
	var errs []error
	for i, res := range results {
		if code := codes.Code(res.GetStatus().GetCode()); code != codes.OK {
			// NotFound included: deleted since the listing; the retry
			// creates it again.
			r.log.Error("updating SPIRE registration entry failed", "spiffe_id", ids[i], "entry_id", es[i].GetId(), "code", code.String(), "message", res.GetStatus().GetMessage())
			errs = append(errs, fmt.Errorf("update SPIRE entry %s (%s): %s: %s", ids[i], es[i].GetId(), code, res.GetStatus().GetMessage()))
			continue
		}
		updated = append(updated, ids[i])
		entryIDs = append(entryIDs, es[i].GetId())
	}
	if len(updated) > 0 {
		r.log.Info("updated SPIRE registration entries", "count", len(updated), "spiffe_ids", updated, "entry_ids", entryIDs)
	}
	return len(updated), errors.Join(errs...)
}

func (r *Reconciler) deleteBatch(ctx context.Context, es []*types.Entry) (int, error) {
	ids := spiffeIDs(es)
	entryIDs := make([]string, len(es))
	for i, e := range es {
		entryIDs[i] = e.GetId()
	}
	cctx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
	defer cancel()
	resp, err := r.cfg.Client.BatchDeleteEntry(cctx, &entryv1.BatchDeleteEntryRequest{Ids: entryIDs})
	if err != nil {
		r.log.Error("deleting SPIRE registration entries failed", "count", len(es), "spiffe_ids", ids, "entry_ids", entryIDs, "error", err)
		return 0, fmt.Errorf("delete %d SPIRE entries: %w", len(es), err)
	}
	results := resp.GetResults()
	if len(results) != len(es) {
		return 0, fmt.Errorf("delete %d SPIRE entries: the server answered %d results", len(es), len(results))
	}
	var deleted, deletedIDs []string
	var errs []error
	for i, res := range results {
		switch code := codes.Code(res.GetStatus().GetCode()); code {
		case codes.OK, codes.NotFound: // gone either way
			deleted = append(deleted, ids[i])
			deletedIDs = append(deletedIDs, entryIDs[i])
		default:
			r.log.Error("deleting SPIRE registration entry failed", "spiffe_id", ids[i], "entry_id", entryIDs[i], "code", code.String(), "message", res.GetStatus().GetMessage())
			errs = append(errs, fmt.Errorf("delete SPIRE entry %s (%s): %s: %s", ids[i], entryIDs[i], code, res.GetStatus().GetMessage()))
		}
	}
	if len(deleted) > 0 {
		r.log.Info("deleted SPIRE registration entries", "count", len(deleted), "spiffe_ids", deleted, "entry_ids", deletedIDs)
	}
	return len(deleted), errors.Join(errs...)
}
