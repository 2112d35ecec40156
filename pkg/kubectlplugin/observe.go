package kubectlplugin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/palisade-net/palisade/pkg/flowlog"
)

// ObserveOptions configures Observe.
type ObserveOptions struct {
	Filter flowlog.Filter
	// JSON prints each record as one JSON line instead of a table row.
	JSON bool
	// Count stops after that many records (0: until ctx ends).
	Count int
	// Recent first prints up to that many of each node proxy's recent
	// records (0: only new ones).
	Recent int
	// Ready, when set, is closed once every node proxy's stream is open.
	Ready chan<- struct{}
}

// Observe streams flow records from every node proxy, merged, until ctx
// ends or Count records were printed.
func (c *Cluster) Observe(ctx context.Context, w io.Writer, opts ObserveOptions) error {
	nps, err := c.NodeProxies(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	q := opts.Filter.Query()
	q.Set("follow", "1")
	if opts.Recent > 0 {
		q.Set("limit", fmt.Sprint(opts.Recent))
	}
	type item struct {
		node string
		rec  *flowlog.Record
	}
	recs := make(chan item, 1024)
	var opened sync.WaitGroup
	opened.Add(len(nps))
	streamErrs := make(chan error, len(nps))
	for _, np := range nps {
		go func() {
			var once sync.Once
			done := func() { once.Do(opened.Done) }
			defer done()
			a, err := c.Admin(ctx, np)
			if err != nil {
				streamErrs <- err
				return
			}
			resp, err := a.open(ctx, "/flows", q)
			if err != nil {
				streamErrs <- err
				return
			}
			defer resp.Body.Close()
			done()
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 64<<10), 4<<20)
			for sc.Scan() {
				line := sc.Bytes()
				if len(bytes.TrimSpace(line)) == 0 {
					continue
				}
				var r flowlog.Record
				if err := json.Unmarshal(line, &r); err != nil {
					streamErrs <- fmt.Errorf("node proxy %s: bad record: %w", np.Node, err)
					return
				}
				select {
				case recs <- item{np.Node, &r}:
				case <-ctx.Done():
					return
				}
			}
			if err := sc.Err(); err != nil && ctx.Err() == nil {
				streamErrs <- fmt.Errorf("node proxy %s: stream: %w", np.Node, err)
			} else if ctx.Err() == nil {
				streamErrs <- fmt.Errorf("node proxy %s: stream ended", np.Node)
			}
		}()
	}
	go func() {
		opened.Wait()
		if opts.Ready != nil {
			close(opts.Ready)
		}
	}()
	if !opts.JSON {
		fmt.Fprintln(w, header)
	}
	printed := 0
	enc := json.NewEncoder(w)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-streamErrs:
			// One node proxy going away ends the command: a partial view
			// would silently miss flows.
			return err
		case it := <-recs:
			if opts.JSON {
				if err := enc.Encode(it.rec); err != nil {
					return err
				}
			} else if _, err := fmt.Fprintln(w, Row(it.node, it.rec)); err != nil {
				return err
			}
			if it.rec.Type == flowlog.TypeLost {
				continue
			}
			printed++
			if opts.Count > 0 && printed >= opts.Count {
				return nil
			}
		}
	}
}

const header = "TIME          NODE        VERDICT  PROTO  SOURCE                       DESTINATION                  REQUEST                                 STATUS  POLICY / RULE / REASON"

// Row formats a record as one table row.
func Row(node string, r *flowlog.Record) string {
	if r.Type == flowlog.TypeLost {
		return fmt.Sprintf("%-13s %-11s %d records lost (this reader was too slow)", r.Time.Local().Format("15:04:05.000"), node, r.Lost)
	}
	req, status := "", ""
	switch {
	case r.GRPC != nil:
		req = r.GRPC.Service + "/" + r.GRPC.Method
		if r.GRPC.Status >= 0 {
			status = fmt.Sprint(r.GRPC.Status)
		}
	case r.Kafka != nil:
		req = fmt.Sprintf("%s v%d", r.Kafka.API, r.Kafka.APIVersion)
		if len(r.Kafka.Topics) > 0 {
			req += " " + strings.Join(r.Kafka.Topics, ",")
		}
		status = fmt.Sprint(r.Kafka.ErrorCode)
	case r.HTTP != nil:
		req = r.HTTP.Method + " " + r.HTTP.Path
		if r.HTTP.Status != 0 {
			status = fmt.Sprint(r.HTTP.Status)
		}
	case r.Packet != nil:
		req = strings.Join(nonEmpty("packet", r.Packet.TCPFlags, fmt.Sprintf("%dB", r.Packet.Length), r.Packet.Interface), " ")
	default:
		req = fmt.Sprintf("%s ↑%dB ↓%dB %s", r.Transport, r.BytesSent, r.BytesReceived, time.Duration(r.DurationMs*float64(time.Millisecond)).Round(time.Millisecond))
	}
	why := strings.Join(nonEmpty(r.Policy, r.Rule, r.Reason), " / ")
	return fmt.Sprintf("%-13s %-11s %-8s %-6s %-28s %-28s %-39s %-7s %s",
		r.Time.Local().Format("15:04:05.000"), trunc(node, 11), r.Verdict, r.Protocol,
		trunc(endpointName(&r.Source), 28), trunc(endpointName(&r.Destination), 28), trunc(req, 39), dash(status), dash(why))
}

func endpointName(e *flowlog.Endpoint) string {
	switch {
	case e.Pod != "":
		return e.Namespace + "/" + e.Pod
	case e.Identity != "":
		return e.Identity
	}
	return e.Address
}

func nonEmpty(ss ...string) []string {
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

func trunc(s string, n int) string {
	if len([]rune(s)) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}
