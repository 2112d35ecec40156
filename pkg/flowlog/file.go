package flowlog

import (
	"bufio"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the flow record pipeline's Prometheus series.
type Metrics struct {
	records   *prometheus.CounterVec
	fileBytes prometheus.Gauge
	rotations prometheus.Counter

	fileWritten, fileDropped     prometheus.Counter
	streamWritten, streamDropped prometheus.Counter
}

// NewMetrics registers the pipeline's series with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_flow_records_total",
			Help: "Flow records by sink (file, stream) and outcome (written, dropped: the sink's queue was full or its write failed).",
		}, []string{"sink", "outcome"}),
		fileBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "palisade_flow_log_bytes",
			Help: "Size of the current flow log file.",
		}),
		rotations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "palisade_flow_log_rotations_total",
			Help: "Flow log files rotated because they reached the size cap.",
		}),
	}
	reg.MustRegister(m.records, m.fileBytes, m.rotations)
	m.fileWritten = m.records.WithLabelValues("file", "written")
	m.fileDropped = m.records.WithLabelValues("file", "dropped")
	m.streamWritten = m.records.WithLabelValues("stream", "written")
	m.streamDropped = m.records.WithLabelValues("stream", "dropped")
	return m
}

// FileConfig configures the flow log file.
type FileConfig struct {
	// Path of the current file; rotated files are Path.1 (newest) to
	// Path.<MaxFiles-1>.
	Path string
	// MaxBytes caps each file; a record that would take the current file
	// past it goes to a new one. At most MaxFiles files exist, so the log
	// never takes more than MaxBytes×MaxFiles on disk.
	MaxBytes int64
	// MaxFiles counts the current file and the rotated ones (≥ 1).
	MaxFiles int
	// Queue is how many records may wait for the writer (default 16384);
	// records that find it full are dropped and counted.
	Queue int
	// FlushInterval is how often the writer takes the waiting records and
	// writes them out (default 200 ms); it also wakes when half the queue
	// is used.
	FlushInterval time.Duration
}

// File writes selected records as JSON lines to a size-capped, rotating
// file. Add never waits for the writer: records collect, under a short
// lock, in a bounded batch that the writer takes every FlushInterval (or
// when it is half full), so a busy proxy pays neither a goroutine
// hand-off nor a write system call per record.
type File struct {
	cfg FileConfig
	m   *Metrics
	log *slog.Logger

	mu      sync.Mutex
	pending []*Record // at most cfg.Queue
	closed  bool
	wake    chan struct{} // the batch is half full
	stop    chan struct{}
	done    chan struct{}

	// Owned by the writer goroutine.
	f    *os.File
	w    *bufio.Writer
	size int64
}

// OpenFile opens (appending to) the flow log at cfg.Path and starts its
// writer.
func OpenFile(cfg FileConfig, m *Metrics, log *slog.Logger) (*File, error) {
	if cfg.MaxBytes <= 0 {
		return nil, errors.New("flow log: max size must be positive")
	}
	if cfg.MaxFiles < 1 {
		cfg.MaxFiles = 1
	}
	if cfg.Queue <= 0 {
		cfg.Queue = 16384
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = 200 * time.Millisecond
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o750); err != nil {
		return nil, fmt.Errorf("flow log: %w", err)
	}
	fl := &File{cfg: cfg, m: m, log: log, pending: make([]*Record, 0, cfg.Queue),
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	if err := fl.open(); err != nil {
		return nil, err
	}
	go fl.run()
	return fl, nil
}

// Add queues r for writing, or counts it dropped when the queue is full
// (or the file closed). r must not be changed afterwards.
func (fl *File) Add(r *Record) {
	fl.mu.Lock()
	if fl.closed || len(fl.pending) >= fl.cfg.Queue {
		fl.mu.Unlock()
		fl.m.fileDropped.Inc()
		return
	}
	fl.pending = append(fl.pending, r)
	half := len(fl.pending) == fl.cfg.Queue/2
	fl.mu.Unlock()
	if half {
		select {
		case fl.wake <- struct{}{}:
		default:
		}
	}
}

// Close writes what is queued, flushes and closes the file.
func (fl *File) Close() error {
	fl.mu.Lock()
	if !fl.closed {
		fl.closed = true
		close(fl.stop)
	}
	fl.mu.Unlock()
	<-fl.done
	return nil
}

func (fl *File) open() error {
	f, err := os.OpenFile(fl.cfg.Path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("flow log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("flow log: %w", err)
	}
	fl.f, fl.size = f, st.Size()
	if fl.w == nil {
		fl.w = bufio.NewWriterSize(f, 64<<10)
	} else {
		fl.w.Reset(f)
	}
	fl.m.fileBytes.Set(float64(fl.size))
	return nil
}

// rotate closes the current file, shifts Path.i to Path.i+1 (dropping the
// oldest) and opens a new current file.
func (fl *File) rotate() error {
	if err := fl.w.Flush(); err != nil {
		return err
	}
	fl.f.Close()
	n := fl.cfg.MaxFiles
	if n == 1 {
		if err := os.Remove(fl.cfg.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	} else {
		for i := n - 1; i >= 1; i-- {
			from := fl.cfg.Path
			if i > 1 {
				from += "." + strconv.Itoa(i-1)
			}
			if err := os.Rename(from, fl.cfg.Path+"."+strconv.Itoa(i)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	fl.m.rotations.Inc()
	return fl.open()
}

func (fl *File) run() {
	defer close(fl.done)
	tick := time.NewTicker(fl.cfg.FlushInterval)
	defer tick.Stop()
	var line []byte
	spare := make([]*Record, 0, fl.cfg.Queue)
	for {
		stopping := false
		select {
		case <-tick.C:
		case <-fl.wake:
		case <-fl.stop:
			stopping = true
		}
		fl.mu.Lock()
		batch := fl.pending
		fl.pending = spare[:0]
		fl.mu.Unlock()
		var failed int
		var firstErr error
		for i, r := range batch {
			var err error
			line, err = appendJSON(line[:0], r)
			if err == nil {
				err = fl.write(line)
			}
			batch[i] = nil
			if err != nil {
				fl.m.fileDropped.Inc()
				failed++
				firstErr = cmp.Or(firstErr, err)
				continue
			}
			fl.m.fileWritten.Inc()
		}
		spare = batch[:0]
		if err := fl.w.Flush(); err != nil {
			firstErr = cmp.Or(firstErr, err)
		}
		if firstErr != nil {
			// One line per batch, however many records failed; a bufio
			// error is sticky, so the file is opened again for the next
			// batch (what the buffer held is lost with the error).
			fl.log.Error("flow log write", "path", fl.cfg.Path, "records_dropped", failed, "error", firstErr)
			fl.f.Close()
			if err := fl.open(); err != nil {
				fl.log.Error("flow log reopen", "path", fl.cfg.Path, "error", err)
			}
		}
		fl.m.fileBytes.Set(float64(fl.size))
		if stopping {
			fl.f.Close()
			return
		}
	}
}

func (fl *File) write(line []byte) error {
	if int64(len(line)) > fl.cfg.MaxBytes {
		return fmt.Errorf("record of %d bytes exceeds the file size cap", len(line))
	}
	if fl.size+int64(len(line)) > fl.cfg.MaxBytes {
		if err := fl.rotate(); err != nil {
			return fmt.Errorf("rotate: %w", err)
		}
	}
	if _, err := fl.w.Write(line); err != nil {
		return err
	}
	fl.size += int64(len(line))
	return nil
}

// appendJSON appends r as one JSON line.
func appendJSON(b []byte, r *Record) ([]byte, error) {
	j, err := json.Marshal(r)
	if err != nil {
		return b, err
	}
	b = append(b, j...)
	return append(b, '\n'), nil
}
