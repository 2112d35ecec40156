package flowlog

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// Pipeline is what the node proxy hands its records to: every record goes
// to the Hub (live stream, recent records), and those the FlowLog
// selection picks go to the File when there is one.
type Pipeline struct {
	hub  *Hub
	file *File
	sel  atomic.Pointer[Selection]
}

// NewPipeline joins hub and file (nil: no file).
func NewPipeline(hub *Hub, file *File) *Pipeline {
	p := &Pipeline{hub: hub, file: file}
	p.sel.Store(&Selection{})
	return p
}

// SetSelection replaces the FlowLog selection.
func (p *Pipeline) SetSelection(s *Selection) { p.sel.Store(s) }

// Selection returns the FlowLog selection in use.
func (p *Pipeline) Selection() *Selection { return p.sel.Load() }

// Add publishes r. r must not be changed afterwards.
func (p *Pipeline) Add(r *Record) {
	p.hub.Publish(r)
	if p.file != nil && p.sel.Load().Selects(r) {
		p.file.Add(r)
	}
}

// Hub returns the pipeline's hub.
func (p *Pipeline) Hub() *Hub { return p.hub }

// Close flushes and closes the file.
func (p *Pipeline) Close() error {
	if p.file != nil {
		return p.file.Close()
	}
	return nil
}

// ServeHTTP serves the records (mount it on the admin API):
//
//	GET ?namespace=&pod=&verdict=&protocol=&type=&limit=N
//	    the recent records the filter selects, as a JSON array;
//	GET ...&follow=1
//	    the recent ones (limit, default 0), then live records as JSON
//	    lines, each written as soon as it is published; a
//	    {"type":"lost","lost":N} line reports records this reader lost
//	    because it read too slowly.
func (p *Pipeline) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f, err := ParseFilter(q)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	limit := 0
	if l := q.Get("limit"); l != "" {
		if limit, err = strconv.Atoi(l); err != nil || limit < 0 {
			http.Error(w, "limit: not a non-negative number", http.StatusBadRequest)
			return
		}
	}
	if q.Get("follow") == "" || q.Get("follow") == "0" || q.Get("follow") == "false" {
		recs := p.hub.Recent(f, limit)
		if recs == nil {
			recs = []*Record{}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(recs)
		return
	}
	sub, recent := p.hub.Subscribe(f, 4096, limit)
	defer p.hub.Unsubscribe(sub)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	for _, rec := range recent {
		if err := enc.Encode(rec); err != nil {
			return
		}
	}
	if err := rc.Flush(); err != nil {
		return
	}
	// A blank line every 15 s (readers skip blank lines) makes a write
	// fail, and the stream end, soon after its reader went away.
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-keepalive.C:
			if _, err := w.Write([]byte("\n")); err != nil {
				return
			}
		case rec := <-sub.C:
			if err := enc.Encode(rec); err != nil {
				return
			}
			// Write what else is queued before flushing once.
		drain:
			for range 256 {
				select {
				case rec := <-sub.C:
					if err := enc.Encode(rec); err != nil {
						return
					}
				default:
					break drain
				}
			}
			// Records dropped while these were queued are reported
			// now, not with some later record.
			if n := sub.TakeLost(); n > 0 {
				if err := enc.Encode(&Record{Time: time.Now(), Type: TypeLost, Lost: n}); err != nil {
					return
				}
			}
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}
