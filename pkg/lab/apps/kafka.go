package apps

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"

	"github.com/twmb/franz-go/pkg/kfake"
)

// KafkaOptions configures ServeKafka.
type KafkaOptions struct {
	// Addr is the listen address, for example ":9092".
	Addr string
	// Advertise is the host:port the broker names in Metadata and
	// FindCoordinator answers; empty means the first global unicast
	// address of the pod's interfaces with Addr's port.
	Advertise string
	// Topics are created at start-up with Partitions partitions each.
	Topics     []string
	Partitions int32
}

// ServeKafka runs a one-broker Kafka cluster (franz-go's kfake, an
// in-memory broker that speaks the real wire protocol) until ctx ends.
//
// kfake names its listener's address as the broker address; the listener
// is wrapped so that it reports Advertise instead, which is what a broker's
// advertised.listeners does in a pod: clients that bootstrap through a
// Service then connect to the pod IP.
func ServeKafka(ctx context.Context, o KafkaOptions, log *slog.Logger) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", o.Addr)
	if err != nil {
		return fmt.Errorf("serve-kafka: %w", err)
	}
	adv := o.Advertise
	if adv == "" {
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		ip, err := podAddr()
		if err != nil {
			ln.Close()
			return fmt.Errorf("serve-kafka: %w", err)
		}
		adv = net.JoinHostPort(ip.String(), port)
	}
	advAddr, err := net.ResolveTCPAddr("tcp", adv)
	if err != nil {
		ln.Close()
		return fmt.Errorf("serve-kafka: advertised address: %w", err)
	}
	partitions := o.Partitions
	if partitions <= 0 {
		partitions = 1
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.ListenFn(func(string, string) (net.Listener, error) {
			return advertisedListener{Listener: ln, addr: advAddr}, nil
		}),
		kfake.AllowAutoTopicCreation(),
	}
	if len(o.Topics) > 0 {
		opts = append(opts, kfake.SeedTopics(partitions, o.Topics...))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		ln.Close()
		return fmt.Errorf("serve-kafka: %w", err)
	}
	log.Info("serving Kafka", "addr", ln.Addr().String(), "advertised", adv, "topics", o.Topics)
	<-ctx.Done()
	c.Close()
	return nil
}

type advertisedListener struct {
	net.Listener
	addr net.Addr
}

func (l advertisedListener) Addr() net.Addr { return l.addr }

// podAddr returns the first global unicast IPv4 address of the host's (in
// the lab: the pod's) interfaces.
func podAddr() (netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("listing addresses: %w", err)
	}
	for _, a := range addrs {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		if ip := pfx.Addr(); ip.Is4() && ip.IsGlobalUnicast() {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no global unicast IPv4 address (pass an advertised address)")
}

// ParseTopics splits a comma-separated topic list, dropping empty names.
func ParseTopics(s string) []string {
	var out []string
	for _, t := range strings.Split(s, ",") {
		if t = strings.TrimSpace(t); t != "" {
			out = append(out, t)
		}
	}
	return out
}
