package kubestatus

import (
	"context"
	"log/slog"
	"sync"

	"k8s.io/client-go/util/workqueue"
)

// runQueue takes keys off queue with workers goroutines until ctx ends
// (the queue is shut down then). handle returns an error to have the key
// retried with the queue's rate limiter; the queue never hands the same key
// to two workers at once.
func runQueue[K comparable](ctx context.Context, queue workqueue.TypedRateLimitingInterface[K], workers int,
	handle func(K) error, log *slog.Logger, what string) {
	go func() {
		<-ctx.Done()
		queue.ShutDown()
	}()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				key, shutdown := queue.Get()
				if shutdown {
					return
				}
				if err := handle(key); err != nil {
					log.Warn("writing "+what+" failed; retrying", "key", key, "error", err)
					queue.AddRateLimited(key)
				} else {
					queue.Forget(key)
				}
				queue.Done(key)
			}
		}()
	}
	wg.Wait()
}
