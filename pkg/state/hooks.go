package state

import "errors"

// Hook lets a capability that keeps pinned objects of its own (socket
// dispatch, pkg/dispatch) follow attachments without pkg/state knowing it:
// Attach runs inside State.Attach once the attachment is recorded (an error
// undoes the whole attach), Detach runs in State.Detach and when a later
// step of an attach fails, Update when SetPolicy changes the policy (an
// error puts the old policy back). A package registers its hook in init, so every
// program that imports it (portcullisctl, the CNI plugin, the OCI hook)
// runs it.
type Hook struct {
	Attach func(s *State, a *Attachment) error
	Detach func(s *State, a *Attachment) error
	Update func(s *State, old, next *Attachment) error
}

var hooks []Hook

// RegisterHook adds a hook; call it from an init function.
func RegisterHook(h Hook) { hooks = append(hooks, h) }

func (s *State) runAttachHooks(a *Attachment, undo *undoStack) error {
	for _, h := range hooks {
		if err := h.Attach(s, a); err != nil {
			return err
		}
		detach := h.Detach
		undo.push(func() { detach(s, a) })
	}
	return nil
}

func (s *State) runDetachHooks(a *Attachment) error {
	var errs []error
	for _, h := range hooks {
		errs = append(errs, h.Detach(s, a))
	}
	return errors.Join(errs...)
}

// runUpdateHooks moves the hooks from old to next; on failure the hooks
// that ran are moved back.
func (s *State) runUpdateHooks(old, next *Attachment) error {
	for i, h := range hooks {
		if err := h.Update(s, old, next); err != nil {
			for _, done := range hooks[:i+1] {
				done.Update(s, next, old)
			}
			return err
		}
	}
	return nil
}
