package multihost

import (
	"bytes"
	"log"
	"strings"
	"testing"
)

// What other nodes wrote is checked key by key: a bad one is logged and
// skipped, the others are kept, and this node's own are not remote.
func TestEtcdKeysAreCheckedOneByOne(t *testing.T) {
	var logged bytes.Buffer
	e := &Etcd{prefix: "/p/backends/", node: "a", log: log.New(&logged, "", 0)}
	set := map[string]Backend{}
	good := `{"service": "db", "node": "b", "endpoint": "10.0.0.2:5432/tcp"}`
	for key, value := range map[string]string{
		"/p/backends/db/b/10.0.0.2:5432/tcp":  good,
		"/p/backends/db/a/10.0.0.1:5432/tcp":  `{"service": "db", "node": "a", "endpoint": "10.0.0.1:5432/tcp"}`,
		"/p/backends/db/c/10.0.0.3:5432/tcp":  `{"service": "db", "node": "c/d", "endpoint": "10.0.0.3:5432/tcp"}`,
		"/p/backends/db/e/10.0.0.4:5432/tcp":  `{"service": "db", "node": "e", "endpoint": "10.0.0.4:0/tcp"}`,
		"/p/backends/db/f/10.0.0.5:5432/tcp":  `{"service": "db", "node": "f", "endpoint": "10.0.0.6:5432/tcp"}`,
		"/p/backends/d b/g/10.0.0.7:5432/tcp": `{"service": "d b", "node": "g", "endpoint": "10.0.0.7:5432/tcp"}`,
		"/p/backends/db/h/10.0.0.8:5432/tcp":  `not json`,
	} {
		e.add(set, key, []byte(value))
	}
	if len(set) != 1 || set["/p/backends/db/b/10.0.0.2:5432/tcp"].Node != "b" {
		t.Errorf("want only b's backend, got %v", set)
	}
	if n := strings.Count(logged.String(), "ignoring"); n != 5 {
		t.Errorf("want 5 keys ignored and logged, got %d:\n%s", n, logged.String())
	}
}
