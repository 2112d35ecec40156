package cni

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/containernetworking/cni/pkg/ns"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"
)

// dispatch runs one CNI command the way skel.PluginMainFuncsWithError does,
// but with the environment, stdin and stdout given as arguments instead of
// the process's own. skel's dispatcher is not exported, and it reads the
// process's stdio and environment directly, so Run cannot use it without
// mutating process-wide state. This follows skel v1.3.1 step by step (the
// same required variables, validation, version reconciliation and error
// codes, built from the library's own pieces), and TestRunMatchesSkel checks
// it against the real skel entry point in a child process.
func dispatch(getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer, funcs skel.CNIFuncs, info version.PluginInfo, about string) *types.Error {
	cmd := getenv("CNI_COMMAND")
	vars := []struct {
		name     string
		required map[string]bool
		validate func(string) *types.Error
	}{
		{"CNI_COMMAND", nil, nil},
		{"CNI_CONTAINERID", map[string]bool{"ADD": true, "CHECK": true, "DEL": true}, utils.ValidateContainerID},
		{"CNI_NETNS", map[string]bool{"ADD": true, "CHECK": true}, nil},
		{"CNI_IFNAME", map[string]bool{"ADD": true, "CHECK": true, "DEL": true}, utils.ValidateInterfaceName},
		{"CNI_ARGS", nil, nil},
		{"CNI_PATH", map[string]bool{"ADD": true, "CHECK": true, "DEL": true, "GC": true, "STATUS": true}, nil},
		{"CNI_NETNS_OVERRIDE", nil, nil},
	}
	values := map[string]string{}
	var missing []string
	for _, v := range vars {
		val := getenv(v.name)
		values[v.name] = val
		if val == "" {
			if v.required[cmd] || v.name == "CNI_COMMAND" {
				missing = append(missing, v.name)
			}
		} else if v.required[cmd] && v.validate != nil {
			if err := v.validate(val); err != nil {
				return err
			}
		}
	}
	if len(missing) > 0 {
		if cmd == "" && about != "" {
			fmt.Fprintln(stderr, about)
			fmt.Fprintf(stderr, "CNI protocol versions supported: %s\n", strings.Join(info.SupportedVersions(), ", "))
			return nil
		}
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("required env variables [%s] missing", strings.Join(missing, ",")), "")
	}

	if cmd == "VERSION" {
		if err := info.Encode(stdout); err != nil {
			return types.NewError(types.ErrIOFailure, err.Error(), "")
		}
		return nil
	}
	stdinData, err := io.ReadAll(stdin)
	if err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("error reading from stdin: %v", err), "")
	}
	if e := validateNetworkName(stdinData); e != nil {
		return e
	}
	args := &skel.CmdArgs{
		ContainerID:   values["CNI_CONTAINERID"],
		Netns:         values["CNI_NETNS"],
		IfName:        values["CNI_IFNAME"],
		Args:          values["CNI_ARGS"],
		Path:          values["CNI_PATH"],
		NetnsOverride: values["CNI_NETNS_OVERRIDE"],
		StdinData:     stdinData,
	}

	switch cmd {
	case "ADD":
		if e := checkVersionAndCall(args, info, funcs.Add); e != nil {
			return e
		}
		return checkNotOwnNetns(args)
	case "DEL":
		if e := checkVersionAndCall(args, info, funcs.Del); e != nil {
			return e
		}
		return checkNotOwnNetns(args)
	case "CHECK":
		return callIfSupported(args, info, "0.4.0", "CHECK", funcs.Check)
	case "GC":
		return callIfSupported(args, info, "1.1.0", "GC", funcs.GC)
	case "STATUS":
		return callIfSupported(args, info, "1.1.0", "STATUS", funcs.Status)
	default:
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("unknown CNI_COMMAND: %v", cmd), "")
	}
}

// validateNetworkName is skel's check of the configuration's "name".
func validateNetworkName(data []byte) *types.Error {
	var conf struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(data, &conf); err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("error unmarshall network config: %v", err), "")
	}
	if conf.Name == "" {
		return types.NewError(types.ErrInvalidNetworkConfig, "missing network name", "")
	}
	return utils.ValidateNetworkName(conf.Name)
}

// checkVersionAndCall reconciles the configuration's version with the
// plugin's and calls fn.
func checkVersionAndCall(args *skel.CmdArgs, info version.PluginInfo, fn func(*skel.CmdArgs) error) *types.Error {
	var dec version.ConfigDecoder
	confVersion, err := dec.Decode(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	var rec version.Reconciler
	if verErr := rec.Check(confVersion, info); verErr != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, "incompatible CNI versions", verErr.Details())
	}
	if fn == nil {
		return nil
	}
	if err := fn(args); err != nil {
		if e, ok := err.(*types.Error); ok {
			return e
		}
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	return nil
}

// callIfSupported runs a command that exists from version minVersion on.
func callIfSupported(args *skel.CmdArgs, info version.PluginInfo, minVersion, cmd string, fn func(*skel.CmdArgs) error) *types.Error {
	var dec version.ConfigDecoder
	confVersion, err := dec.Decode(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	if ok, err := version.GreaterThanOrEqualTo(confVersion, minVersion); err != nil {
		return types.NewError(types.ErrDecodingFailure, err.Error(), "")
	} else if !ok {
		return types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("config version does not allow %s", cmd), "")
	}
	for _, pv := range info.SupportedVersions() {
		ok, err := version.GreaterThanOrEqualTo(pv, confVersion)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, err.Error(), "")
		}
		if ok {
			return checkVersionAndCall(args, info, fn)
		}
	}
	return types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("plugin version does not allow %s", cmd), "")
}

// checkNotOwnNetns is skel's refusal of CNI_NETNS equal to the plugin's own
// namespace, unless CNI_NETNS_OVERRIDE is set.
func checkNotOwnNetns(args *skel.CmdArgs) *types.Error {
	if o := strings.ToUpper(args.NetnsOverride); o == "TRUE" || o == "1" {
		return nil
	}
	own, err := ns.CheckNetNS(args.Netns)
	if err != nil {
		return err
	}
	if own {
		return types.NewError(types.ErrInvalidNetNS, "plugin's netns and netns from CNI_NETNS should not be the same", "")
	}
	return nil
}
