package main

import (
	"strings"
	"testing"
)

// Bad flags fail at once with an error naming the flag, before any
// connection to etcd is tried.
func TestSyncBadInput(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"sync", "--node", "a"}, "--etcd is required"},
		{[]string{"sync", "--etcd", "http://127.0.0.1:1", "--node", ""}, "--node"},
		{[]string{"sync", "--etcd", "http://127.0.0.1:1", "--node", "a/b"}, "--node"},
		{[]string{"sync", "--etcd", "http://127.0.0.1:1", "--node", strings.Repeat("n", 59)}, "--node"},
		{[]string{"sync", "--etcd", "http://127.0.0.1:1", "--node", "a", "--prefix", "x"}, "--prefix"},
		{[]string{"sync", "--etcd", "http://127.0.0.1:1", "--node", "a", "--ttl", "1s"}, "--ttl"},
		{[]string{"sync", "--etcd", "http://127.0.0.1:1", "--node", "a", "--interval", "0s"}, "--interval"},
	} {
		out, err := run(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Count(err.Error(), "\n") > 0 {
			t.Errorf("portcullisctl %s: want a one-line error naming %s, got %v (%s)", strings.Join(c.args, " "), c.want, err, out)
		}
	}
}
