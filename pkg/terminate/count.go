package terminate

import (
	"fmt"

	"github.com/portcullis-net/portcullis/pkg/stats"
)

// countTerminated adds the sockets a run destroyed to their attachments'
// socket_terminated decision counters (portcullisctl stats, metrics).
// Socket.CgroupID is the attached cgroup, the attachment's counter key.
func countTerminated(stateDir string, r *Report) error {
	perKey := map[uint64]uint64{}
	for _, n := range r.Namespaces {
		for _, sock := range n.Sockets {
			if sock.Error == "" {
				perKey[sock.CgroupID]++
			}
		}
	}
	if len(perKey) == 0 {
		return nil
	}
	m, err := stats.Open(stateDir)
	if err != nil {
		return fmt.Errorf("count terminated sockets: %w", err)
	}
	defer m.Close()
	for key, n := range perKey {
		if err := m.Add(key, stats.SocketTerminated, n); err != nil {
			return fmt.Errorf("count terminated sockets: %w", err)
		}
	}
	return nil
}
