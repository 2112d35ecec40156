package main

import (
	"context"
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
)

func TestParseInterspersed(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    []string
		from    string
		wantErr bool
	}{
		{[]string{"web", "8080", "--from", "client"}, []string{"web", "8080"}, "client", false},
		{[]string{"--from", "client", "web", "8080"}, []string{"web", "8080"}, "client", false},
		{[]string{"web", "--from", "client", "8080"}, []string{"web", "8080"}, "client", false},
		{[]string{"web"}, nil, "", true},
		{[]string{"web", "1", "2"}, nil, "", true},
	} {
		fs := flag.NewFlagSet("explain", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		from := fs.String("from", "", "")
		got, err := parse(fs, tc.args, 2)
		if (err != nil) != tc.wantErr || !slices.Equal(got, tc.want) || *from != tc.from {
			t.Errorf("parse(%v) = %v, %v, from %q; want %v, error %v, from %q", tc.args, got, err, *from, tc.want, tc.wantErr, tc.from)
		}
	}
}

func TestRunRefusesBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"explain", "web", "http"}, `PORT "http" is not a port number`},
		{[]string{"observe", "--verdict", "maybe"}, "verdict: unknown value"},
		{[]string{"status", "-o", "yaml", "--kubeconfig", "/nonexistent"}, "-o yaml: want table or json"},
	} {
		err := run(context.Background(), tc.args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}
