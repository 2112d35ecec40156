package h2

import "sync"

// initialWindow is HTTP/2's initial flow-control window (RFC 9113 §6.9.2).
const initialWindow = 65535

// flow keeps the connection-level flow control of the backend→client
// direction consistent when the proxy adds DATA of its own (denial
// bodies), which the backend never sent and the client will nevertheless
// credit.
//
// window is how many more DATA bytes the client accepts on the
// connection, counted from what the client granted and what it was sent
// (by the backend or the proxy). debt is how many injected bytes the
// backend's view of that window does not yet reflect: the client's next
// connection-level WINDOW_UPDATEs credit those bytes, so that much of
// them is kept from the backend. While debt is non-zero the backend may
// believe it can send up to debt bytes more than the client accepts;
// take holds such DATA until the client's credit arrives, so the client
// never sees its window exceeded.
//
// The client→backend direction needs no such state: DATA of denied or
// closed streams is dropped, and the proxy credits it back to the client
// at once (see conn.dropData).
type flow struct {
	mu     sync.Mutex
	cond   *sync.Cond
	window int64
	debt   int64
	closed bool
}

func newFlow() *flow {
	f := &flow{window: initialWindow}
	f.cond = sync.NewCond(&f.mu)
	return f
}

// credit accounts for a connection-level WINDOW_UPDATE from the client and
// returns the part of incr to forward to the backend.
func (f *flow) credit(incr uint32) uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.window += int64(incr)
	keep := min(int64(incr), f.debt)
	f.debt -= keep
	f.cond.Broadcast()
	return incr - uint32(keep)
}

// take waits until n bytes of backend DATA fit the client's window and
// charges them. It waits only while the overrun could be the proxy's
// doing (debt > 0): a backend that exceeds the window on its own is
// relayed as is, and the client deals with it. It returns false when the
// connection is closing.
func (f *flow) take(n int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for f.window < n && f.debt > 0 && !f.closed {
		f.cond.Wait()
	}
	if f.closed {
		return false
	}
	f.window -= n
	return true
}

// tryTake charges n bytes of backend DATA if they fit the client's
// window now (or cannot be the proxy's doing), without waiting.
func (f *flow) tryTake(n int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.window < n && f.debt > 0 {
		return false
	}
	f.window -= n
	return true
}

// inject charges n bytes of proxy DATA if they fit the client's window
// now, and reports whether they did.
func (f *flow) inject(n int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.window < n {
		return false
	}
	f.window -= n
	f.debt += n
	return true
}

// close releases every waiter.
func (f *flow) close() {
	f.mu.Lock()
	f.closed = true
	f.cond.Broadcast()
	f.mu.Unlock()
}
