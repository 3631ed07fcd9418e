package policy

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
)

// checkExactKeys reports the first object key in data that names no field
// of t exactly. encoding/json matches field names case-insensitively, so
// without this a typo like "allowedports" would be accepted silently.
func checkExactKeys(data []byte, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		if _, custom := reflect.PointerTo(t).MethodByName("UnmarshalJSON"); custom && path != "" {
			return nil // it checks its own keys
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(data, &obj) != nil {
			return nil // not an object: the decoder reports the type error
		}
		fields := jsonFields(t)
		for key, raw := range obj {
			ft, ok := fields[key]
			if !ok {
				return fmt.Errorf("unknown field %q%s", key, where(path))
			}
			if err := checkExactKeys(raw, ft, join(path, key)); err != nil {
				return err
			}
		}
	case reflect.Slice:
		var items []json.RawMessage
		if json.Unmarshal(data, &items) != nil {
			return nil
		}
		for i, raw := range items {
			if err := checkExactKeys(raw, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// jsonFields maps each JSON name of a struct (embedded structs included) to
// its type; an outer field shadows an embedded one of the same name.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || (!f.IsExported() && !f.Anonymous) {
			continue
		}
		if f.Anonymous && name == "" {
			for k, v := range jsonFields(f.Type) {
				if _, shadowed := fields[k]; !shadowed {
					fields[k] = v
				}
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f.Type
	}
	return fields
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func where(path string) string {
	if path == "" {
		return ""
	}
	return " in " + path
}
