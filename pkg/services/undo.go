package services

import (
	"errors"
	"fmt"
)

// Saved is what some services were before a change, so that the change
// can be undone (a CNI ADD that fails after applying its conf's services).
type Saved struct {
	// before maps each name to its declaration, nil when it did not exist.
	before map[string]*Declaration
}

// Save records the named services as they are now.
func (m *Maps) Save(names []string) (*Saved, error) {
	s := &Saved{before: map[string]*Declaration{}}
	for _, name := range names {
		svc, err := m.Get(name)
		if errors.Is(err, ErrNotFound) {
			s.before[name] = nil
			continue
		} else if err != nil {
			return nil, err
		}
		s.before[name] = &Declaration{Name: name, Frontends: svc.Frontends, Backends: staticsOf(svc)}
	}
	return s, nil
}

// Restore puts the saved services back as they were: one that did not
// exist is deleted, one that did gets its frontends and static backends
// back (its provider backends come from providers, as always).
func (m *Maps) Restore(s *Saved, providers []Provider) error {
	var errs []error
	for name, d := range s.before {
		var err error
		if d == nil {
			if err = m.Delete(name); errors.Is(err, ErrNotFound) {
				err = nil
			}
		} else {
			err = m.Put(*d, providers)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("restore service %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}
