package state

import (
	"fmt"

	"github.com/portcullis-net/portcullis/pkg/services"
)

// Services opens the service maps of this state. Hold the state open
// (exclusively, to change them) while using them.
func (s *State) Services() (*services.Maps, error) {
	return services.Open(s.dir)
}

// Providers lists what every attachment's policy provides.
func (s *State) Providers() ([]services.Provider, error) {
	list, err := s.Attachments()
	if err != nil {
		return nil, err
	}
	var out []services.Provider
	for i := range list {
		a := &list[i]
		out = append(out, services.ProvidersOf(a.ID, a.CgroupID, &a.Policy)...)
	}
	return out, nil
}

// ApplyServices puts service declarations (from the CNI conf or
// services.d); applying the same declarations again changes nothing.
func (s *State) ApplyServices(decls []services.Declaration) error {
	if len(decls) == 0 {
		return nil // every CNI ADD calls this; skip reading every record
	}
	return s.WithServices(func(m *services.Maps, providers []services.Provider) error {
		return m.Apply(decls, providers)
	})
}

// WithServices runs f with the open service maps and the current
// providers (the attachments whose policies provide services).
func (s *State) WithServices(f func(m *services.Maps, providers []services.Provider) error) error {
	m, err := s.Services()
	if err != nil {
		return err
	}
	defer m.Close()
	providers, err := s.Providers()
	if err != nil {
		return err
	}
	return f(m, providers)
}

// syncServices runs after an attachment was recorded (gone false) or
// removed: the services it provides get their backends recomputed, and a
// removed attachment's port registry entries are dropped (sock_release no
// longer runs for its sockets). An attach also applies services.d, so
// declarations take effect without a daemon.
func (s *State) syncServices(a *Attachment, gone bool) error {
	var (
		decls []services.Declaration
		err   error
	)
	if !gone {
		if decls, err = services.LoadDir(services.Dir()); err != nil {
			return fmt.Errorf("services.d: %w", err)
		}
	}
	var names []string
	for _, p := range a.Policy.Provides {
		names = append(names, p.Service)
	}
	if !gone && len(decls) == 0 && len(names) == 0 {
		return nil // nothing to recompute: the maps need not even be opened
	}
	m, err := s.Services()
	if err != nil {
		return err
	}
	defer m.Close()
	if gone {
		if err := m.ForgetCgroup(a.CgroupID); err != nil {
			return fmt.Errorf("forget port registry of %s: %w", a.ID, err)
		}
	}
	if len(decls) == 0 && len(names) == 0 {
		return nil // nothing to recompute: skip reading every record
	}
	providers, err := s.Providers()
	if err != nil {
		return err
	}
	if err := m.Apply(decls, providers); err != nil {
		return fmt.Errorf("services.d: %w", err)
	}
	return m.Sync(names, providers)
}
