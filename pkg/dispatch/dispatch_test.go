package dispatch

import (
	"strings"
	"testing"
)

// Every range splits into aligned blocks that cover it exactly once.
func TestBlocksCoverTheRangeExactly(t *testing.T) {
	for _, r := range [][2]uint16{{0, 65535}, {1, 65535}, {80, 80}, {80, 90}, {16040, 16060}, {0, 0}, {65535, 65535}, {1024, 2047}, {3, 65534}} {
		next := uint32(r[0])
		for _, b := range blocksOf(r[0], r[1]) {
			size := uint32(1) << b.level
			if uint32(b.start) != next || uint32(b.start)%size != 0 {
				t.Fatalf("%v: block %+v, want an aligned block at %d", r, b, next)
			}
			next += size
		}
		if next != uint32(r[1])+1 {
			t.Fatalf("%v: blocks end at %d", r, next)
		}
	}
	if n := len(blocksOf(0, 65535)); n != 1 {
		t.Fatalf("0-65535 takes %d blocks, want 1", n)
	}
	if n := len(blocksOf(1, 65535)); n != 16 {
		t.Fatalf("1-65535 takes %d blocks, want 16", n)
	}
}

func TestParseBinding(t *testing.T) {
	b, err := ParseBinding("web", "TCP", "fd16::/64", "0-65535")
	if err != nil || b.String() != "tcp fd16::/64 0-65535" {
		t.Fatalf("%+v %v", b, err)
	}
	if b, err := ParseBinding("web", "udp", "127.0.7.9", "53"); err != nil || b.Prefix.String() != "127.0.7.9/32" {
		t.Fatalf("%+v %v", b, err)
	}
	for _, c := range []struct{ label, proto, prefix, ports, want string }{
		{"", "tcp", "127.0.7.0/24", "80", "label"},
		{"a b", "tcp", "127.0.7.0/24", "80", "label"},
		{"web", "icmp", "127.0.7.0/24", "80", "not tcp or udp"},
		{"web", "tcp", "127.0.7.0/33", "80", "not an address"},
		{"web", "tcp", "::ffff:127.0.7.0/120", "80", "write IPv4 prefixes as IPv4"},
		{"web", "tcp", "127.0.7.0/24", "65536", "want N, N-M"},
		{"web", "tcp", "127.0.7.0/24", "x-9", "want N, N-M"},
	} {
		if _, err := ParseBinding(c.label, c.proto, c.prefix, c.ports); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c, err, c.want)
		}
	}
}
