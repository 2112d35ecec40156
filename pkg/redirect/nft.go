package redirect

import (
	"slices"
	"strings"
)

// nftBlock is one item of an nft listing: a header line and, for blocks,
// the lines up to and including the closing brace.
type nftBlock struct {
	header string
	body   []string
}

// normaliseNft turns "nft -s list ruleset" output into a stable form: comment
// lines and blank lines are dropped, tables are sorted, the items inside each
// table (chains, sets, ...) are sorted by their header line, base chains
// with policy accept and no rules are left out, and so are tables left
// empty by that (iptables-nft creates those on first use and never deletes
// them; they behave exactly like absent ones).
func normaliseNft(out string) string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		lines = append(lines, strings.TrimRight(l, " \t"))
	}
	tables := splitBlocks(lines)
	var rendered []string
	for _, t := range tables {
		if len(t.body) == 0 {
			// A top-level statement outside a table; keep it verbatim.
			rendered = append(rendered, t.header+"\n")
			continue
		}
		var inner []nftBlock
		for _, it := range splitBlocks(t.body[:len(t.body)-1]) {
			if !emptyBaseChain(it) {
				inner = append(inner, it)
			}
		}
		if len(inner) == 0 {
			continue
		}
		slices.SortStableFunc(inner, func(a, b nftBlock) int { return strings.Compare(a.header, b.header) })
		var b strings.Builder
		b.WriteString(t.header + "\n")
		for _, c := range inner {
			b.WriteString(c.header + "\n")
			for _, l := range c.body {
				b.WriteString(l + "\n")
			}
		}
		b.WriteString(t.body[len(t.body)-1] + "\n")
		rendered = append(rendered, b.String())
	}
	slices.Sort(rendered)
	return strings.Join(rendered, "")
}

// splitBlocks splits lines at the outermost level into items: a line that
// opens more braces than it closes starts a block that runs until the
// braces balance again.
func splitBlocks(lines []string) []nftBlock {
	var (
		out   []nftBlock
		depth int
	)
	for _, l := range lines {
		d := strings.Count(l, "{") - strings.Count(l, "}")
		if depth == 0 {
			out = append(out, nftBlock{header: l})
		} else {
			out[len(out)-1].body = append(out[len(out)-1].body, l)
		}
		depth += d
		if depth < 0 {
			depth = 0
		}
	}
	return out
}

// emptyBaseChain reports whether an item is a base chain whose only line is
// its "type ... policy accept;" declaration. iptables-nft creates such
// chains on first use and never deletes them; they let everything pass.
func emptyBaseChain(it nftBlock) bool {
	if !strings.HasPrefix(strings.TrimSpace(it.header), "chain ") || len(it.body) != 2 {
		return false
	}
	decl := strings.TrimSpace(it.body[0])
	return strings.HasPrefix(decl, "type ") && strings.HasSuffix(decl, "policy accept;")
}
