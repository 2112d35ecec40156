module github.com/palisade-net/palisade/test/interop

go 1.26.8

replace github.com/palisade-net/palisade => ../..

require (
	github.com/palisade-net/palisade v0.0.0-00010101000000-000000000000
	github.com/spiffe/go-spiffe/v2 v2.9.0
	istio.io/istio v0.0.0-20260827124520-eed52ebb66ad
)

require (
	github.com/Microsoft/go-winio v0.6.2 // indirect
	github.com/spiffe/spire-api-sdk v1.14.1 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260825221802-da73d73af1c5 // indirect
)

require (
	github.com/cbeuw/connutil v1.0.1 // indirect
	github.com/go-jose/go-jose/v4 v4.1.5 // indirect
	github.com/go-logr/logr v1.4.4 // indirect
	github.com/golang/protobuf v1.5.4 // indirect
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/spf13/cobra v1.10.2 // indirect
	github.com/spf13/pflag v1.0.10 // indirect
	go.uber.org/multierr v1.11.0 // indirect
	go.uber.org/zap v1.28.0 // indirect
	golang.org/x/net v0.62.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/genproto/googleapis/api v0.0.0-20260817212433-ac3dfec99bb1 // indirect
	google.golang.org/grpc v1.85.0 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
	gopkg.in/natefinch/lumberjack.v2 v2.2.1 // indirect
	istio.io/api v1.31.1 // indirect; istio.io/istio asks for v1.31.0-rc.0.0.20260824154656-b943409680a7, which the module proxy refuses (403): see README.md
	k8s.io/klog/v2 v2.140.0 // indirect
)
