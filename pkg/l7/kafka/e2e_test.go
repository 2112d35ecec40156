package kafka

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// advertisedListener is kfake's listener with the proxy's address: kfake
// advertises its listener's address in Metadata and FindCoordinator, so
// every client connection goes through the proxy.
type advertisedListener struct {
	net.Listener
	addr net.Addr
}

func (l advertisedListener) Addr() net.Addr { return l.addr }

// kafkaLab is one kfake broker behind a proxy that runs Serve for every
// connection.
type kafkaLab struct {
	addr    string // the proxy; clients bootstrap here
	cluster *kfake.Cluster
	judge   *stubJudge
	rec     *recorder

	mu       sync.Mutex
	produced map[string]int // topic → Produce requests that reached kfake
	fetched  map[string]int
	errs     []error
}

func newKafkaLab(t *testing.T) *kafkaLab {
	t.Helper()
	proxy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lab := &kafkaLab{addr: proxy.Addr().String(), judge: &stubJudge{}, rec: &recorder{},
		produced: map[string]int{}, fetched: map[string]int{}}
	var brokerAddr string
	listen := func(network, _ string) (net.Listener, error) {
		inner, err := net.Listen(network, "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		brokerAddr = inner.Addr().String()
		return advertisedListener{inner, proxy.Addr()}, nil
	}
	lab.cluster, err = kfake.NewCluster(kfake.NumBrokers(1), kfake.ListenFn(listen),
		kfake.SeedTopics(2, "orders", "secret-plans", "kcat-orders", "sarama-orders"))
	if err != nil {
		t.Fatal(err)
	}
	// Count what reaches the broker, to prove denials never do.
	lab.cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		lab.cluster.KeepControl()
		lab.mu.Lock()
		for _, tp := range req.(*kmsg.ProduceRequest).Topics {
			lab.produced[tp.Topic]++
		}
		lab.mu.Unlock()
		return nil, nil, false
	})
	lab.cluster.ControlKey(int16(kmsg.Fetch), func(req kmsg.Request) (kmsg.Response, error, bool) {
		lab.cluster.KeepControl()
		lab.mu.Lock()
		for _, tp := range req.(*kmsg.FetchRequest).Topics {
			lab.fetched[tp.Topic]++
		}
		lab.mu.Unlock()
		return nil, nil, false
	})

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := proxy.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", brokerAddr)
			if err != nil {
				c.Close()
				continue
			}
			wg.Go(func() {
				if err := Serve(ctx, c, b, lab.rec.session(lab.judge)); err != nil && !errors.Is(err, context.Canceled) {
					lab.mu.Lock()
					lab.errs = append(lab.errs, err)
					lab.mu.Unlock()
				}
			})
		}
	})
	t.Cleanup(func() {
		cancel()
		proxy.Close()
		wg.Wait()
		lab.cluster.Close()
		lab.mu.Lock()
		defer lab.mu.Unlock()
		for _, err := range lab.errs {
			// Clients close connections mid-flight on shutdown; only
			// protocol violations are failures.
			if errors.Is(err, ErrMalformed) || errors.Is(err, ErrUnsupported) || errors.Is(err, ErrBackend) {
				t.Errorf("a proxied connection failed: %v", err)
			}
		}
	})
	return lab
}

func (l *kafkaLab) reached(topic string) (produced, fetched int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.produced[topic], l.fetched[topic]
}

// deniedRecords counts denial records naming topic.
func (l *kafkaLab) deniedRecords(topic string) int {
	recs, _ := l.rec.snapshot()
	n := 0
	for _, r := range recs {
		if r.Verdict.Allow || r.Kafka == nil {
			continue
		}
		for _, tp := range r.Kafka.Topics {
			if tp == topic {
				n++
				break
			}
		}
	}
	return n
}

// promptly bounds how long a client may take to learn of a denial.
const promptly = 10 * time.Second

func TestE2EFranzGo(t *testing.T) {
	lab := newKafkaLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	producer, err := kgo.NewClient(kgo.SeedBrokers(lab.addr), kgo.ClientID("franz-producer"))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()

	t.Run("produce allowed", func(t *testing.T) {
		for i := range 20 { // several batches, pipelined by kgo
			if err := producer.ProduceSync(ctx, &kgo.Record{Topic: "orders", Value: []byte{byte(i)}}).FirstErr(); err != nil {
				t.Fatalf("produce %d: %v", i, err)
			}
		}
	})

	t.Run("produce denied", func(t *testing.T) {
		pctx, pcancel := context.WithTimeout(ctx, promptly)
		defer pcancel()
		start := time.Now()
		err := producer.ProduceSync(pctx, &kgo.Record{Topic: "secret-plans", Value: []byte("x")}).FirstErr()
		if !errors.Is(err, kerr.TopicAuthorizationFailed) {
			t.Fatalf("produce to a denied topic: %v after %v", err, time.Since(start))
		}
		if produced, _ := lab.reached("secret-plans"); produced != 0 {
			t.Fatalf("%d denied produce requests reached the broker", produced)
		}
		if lab.deniedRecords("secret-plans") == 0 {
			t.Fatal("no denial recorded")
		}
	})

	t.Run("consume allowed", func(t *testing.T) {
		consumer, err := kgo.NewClient(kgo.SeedBrokers(lab.addr), kgo.ConsumeTopics("orders"),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		defer consumer.Close()
		got := 0
		for got < 20 {
			fs := consumer.PollFetches(ctx)
			if err := ctx.Err(); err != nil {
				t.Fatalf("consumed %d of 20: %v", got, err)
			}
			fs.EachError(func(tp string, p int32, err error) { t.Fatalf("%s/%d: %v", tp, p, err) })
			got += fs.NumRecords()
		}
	})

	t.Run("group consume allowed", func(t *testing.T) {
		consumer, err := kgo.NewClient(kgo.SeedBrokers(lab.addr), kgo.ConsumeTopics("orders"), kgo.ConsumerGroup("g-orders"),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for got < 20 {
			fs := consumer.PollFetches(ctx)
			if err := ctx.Err(); err != nil {
				t.Fatalf("consumed %d of 20: %v", got, err)
			}
			fs.EachError(func(tp string, p int32, err error) { t.Fatalf("%s/%d: %v", tp, p, err) })
			got += fs.NumRecords()
		}
		if err := consumer.CommitUncommittedOffsets(ctx); err != nil {
			t.Fatalf("commit: %v", err)
		}
		consumer.Close()
	})

	t.Run("consume denied", func(t *testing.T) {
		consumer, err := kgo.NewClient(kgo.SeedBrokers(lab.addr), kgo.ConsumeTopics("secret-plans"),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
		if err != nil {
			t.Fatal(err)
		}
		defer consumer.Close()
		pctx, pcancel := context.WithTimeout(ctx, promptly)
		defer pcancel()
		var got error
		for got == nil && pctx.Err() == nil {
			consumer.PollFetches(pctx).EachError(func(_ string, _ int32, err error) {
				if got == nil {
					got = err
				}
			})
		}
		if !errors.Is(got, kerr.TopicAuthorizationFailed) {
			t.Fatalf("consuming a denied topic: %v", got)
		}
		if _, fetched := lab.reached("secret-plans"); fetched != 0 {
			t.Fatalf("%d denied fetches reached the broker", fetched)
		}
	})

	t.Run("admin metadata of everything is denied", func(t *testing.T) {
		req := kmsg.NewPtrMetadataRequest() // null topics: all
		resp, err := req.RequestWith(ctx, producer)
		// v13 carries the error at the top level, as no topic entry can;
		// kgo turns it into the request's error.
		if !errors.Is(err, kerr.TopicAuthorizationFailed) || len(resp.Topics) != 0 || len(resp.Brokers) != 1 {
			t.Fatalf("all-topics metadata v%d: %v, %d topics, %d brokers", resp.Version, err, len(resp.Topics), len(resp.Brokers))
		}
	})

	t.Run("id-only versions capped", func(t *testing.T) {
		recs, _ := lab.rec.snapshot()
		seen := map[int16]int16{}
		for _, r := range recs {
			seen[r.Kafka.APIKey] = max(seen[r.Kafka.APIKey], r.Kafka.APIVersion)
		}
		if seen[0] != 12 || seen[1] != 12 {
			t.Fatalf("max Produce v%d, Fetch v%d; want 12 (the last versions with topic names)", seen[0], seen[1])
		}
	})
}

func TestE2ESarama(t *testing.T) {
	lab := newKafkaLab(t)
	cfg := sarama.NewConfig()
	cfg.ClientID = "sarama-client"
	cfg.Producer.Return.Successes = true
	cfg.Producer.Retry.Max = 1
	cfg.Producer.Retry.Backoff = 50 * time.Millisecond
	cfg.Metadata.Retry.Max = 1
	cfg.Metadata.Retry.Backoff = 50 * time.Millisecond
	cfg.Net.DialTimeout = 5 * time.Second

	producer, err := sarama.NewSyncProducer([]string{lab.addr}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()

	partition, _, err := producer.SendMessage(&sarama.ProducerMessage{Topic: "sarama-orders", Value: sarama.StringEncoder("hello")})
	if err != nil {
		t.Fatalf("produce allowed: %v", err)
	}

	start := time.Now()
	_, _, err = producer.SendMessage(&sarama.ProducerMessage{Topic: "secret-plans", Value: sarama.StringEncoder("x")})
	if !errors.Is(err, sarama.ErrTopicAuthorizationFailed) || time.Since(start) > promptly {
		t.Fatalf("produce denied: %v after %v", err, time.Since(start))
	}
	if produced, _ := lab.reached("secret-plans"); produced != 0 {
		t.Fatalf("%d denied produce requests reached the broker", produced)
	}

	consumer, err := sarama.NewConsumer([]string{lab.addr}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	pc, err := consumer.ConsumePartition("sarama-orders", partition, sarama.OffsetOldest)
	if err != nil {
		t.Fatalf("consume allowed: %v", err)
	}
	select {
	case m := <-pc.Messages():
		if string(m.Value) != "hello" {
			t.Fatalf("consumed %q", m.Value)
		}
	case <-time.After(promptly):
		t.Fatal("message not consumed")
	}
	pc.Close()

	start = time.Now()
	_, err = consumer.ConsumePartition("secret-plans", 0, sarama.OffsetOldest)
	if !errors.Is(err, sarama.ErrTopicAuthorizationFailed) || time.Since(start) > promptly {
		t.Fatalf("consume denied: %v after %v", err, time.Since(start))
	}
}

// kcatPath finds kcat: absent and not in CI skips, absent in CI fails.
func kcatPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("kcat")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("kcat is required in CI (apt-get install kcat)")
		}
		t.Skip("kcat not installed; install kcat (librdkafka) to run this test")
	}
	return p
}

func runKcat(t *testing.T, ctx context.Context, kcat, stdin string, args ...string) (string, string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, kcat, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	return out.String(), errOut.String(), err
}

func TestE2EKcat(t *testing.T) {
	kcat := kcatPath(t)
	lab := newKafkaLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	common := []string{"-b", lab.addr, "-X", "client.id=kcat-client", "-X", "topic.metadata.refresh.interval.ms=1000"}

	if _, stderr, err := runKcat(t, ctx, kcat, "hello\nworld\n", append(common, "-t", "kcat-orders", "-P")...); err != nil {
		t.Fatalf("kcat produce allowed: %v\n%s", err, stderr)
	}
	out, stderr, err := runKcat(t, ctx, kcat, "", append(common, "-t", "kcat-orders", "-C", "-e", "-o", "beginning")...)
	if err != nil || !strings.Contains(out, "hello") || !strings.Contains(out, "world") {
		t.Fatalf("kcat consume allowed: %v, out %q\n%s", err, out, stderr)
	}

	pctx, pcancel := context.WithTimeout(ctx, promptly+5*time.Second)
	defer pcancel()
	start := time.Now()
	_, stderr, err = runKcat(t, pctx, kcat, "x\n", append(common, "-t", "secret-plans", "-P", "-X", "message.timeout.ms=5000")...)
	if pctx.Err() != nil || err == nil && !strings.Contains(strings.ToLower(stderr), "authorization failed") {
		t.Fatalf("kcat produce denied: %v after %v\n%s", err, time.Since(start), stderr)
	}
	if !strings.Contains(strings.ToLower(stderr), "authorization") {
		t.Fatalf("kcat produce denied without an authorization error:\n%s", stderr)
	}
	if produced, _ := lab.reached("secret-plans"); produced != 0 {
		t.Fatalf("%d denied produce requests reached the broker", produced)
	}

	cctx, ccancel := context.WithTimeout(ctx, promptly+5*time.Second)
	defer ccancel()
	start = time.Now()
	_, stderr, err = runKcat(t, cctx, kcat, "", append(common, "-t", "secret-plans", "-C", "-e", "-o", "beginning")...)
	if cctx.Err() != nil || err == nil && !strings.Contains(strings.ToLower(stderr), "authorization failed") {
		t.Fatalf("kcat consume denied: %v after %v\n%s", err, time.Since(start), stderr)
	}
	if _, fetched := lab.reached("secret-plans"); fetched != 0 {
		t.Fatalf("%d denied fetches reached the broker", fetched)
	}
}
