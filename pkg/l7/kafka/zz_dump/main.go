package main

import (
	"fmt"
	"reflect"
	"strings"

	"github.com/twmb/franz-go/pkg/kmsg"
)

func dump(t reflect.Type, indent string, seen map[reflect.Type]bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Name == "UnknownTags" || f.Name == "Version" {
			continue
		}
		ft := f.Type
		fmt.Printf("%s%s %s\n", indent, f.Name, ft)
		et := ft
		for et.Kind() == reflect.Slice || et.Kind() == reflect.Ptr {
			et = et.Elem()
		}
		if et.Kind() == reflect.Struct && !seen[et] && !strings.Contains(et.String(), "Tags") {
			seen[et] = true
			dump(et, indent+"  ", seen)
		}
	}
}

func main() {
	for k := int16(0); k < 100; k++ {
		req := kmsg.RequestForKey(k)
		if req == nil {
			continue
		}
		fmt.Printf("=== %d %s max=%d\n--- request\n", k, kmsg.NameForKey(k), req.MaxVersion())
		dump(reflect.TypeOf(req).Elem(), "  ", map[reflect.Type]bool{})
		fmt.Printf("--- response\n")
		dump(reflect.TypeOf(req.ResponseKind()).Elem(), "  ", map[reflect.Type]bool{})
	}
}
