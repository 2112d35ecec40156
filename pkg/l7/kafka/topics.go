package kafka

// topicSet collects the distinct topic names of one request in order of
// first appearance. "" stands for a topic the inspector cannot name (see
// the package documentation).
type topicSet struct {
	names []string
	seen  map[string]struct{} // built once names outgrows a linear scan
	st    *connState          // resolves topic ids and fetch sessions; may be nil
}

// linearTopics is how many names topicSet deduplicates by scanning.
const linearTopics = 16

func (t *topicSet) add(name string) {
	if t.seen != nil {
		if _, dup := t.seen[name]; dup {
			return
		}
		t.seen[name] = struct{}{}
		t.names = append(t.names, name)
		return
	}
	for _, n := range t.names {
		if n == name {
			return
		}
	}
	t.names = append(t.names, name)
	if len(t.names) > linearTopics {
		t.seen = make(map[string]struct{}, 2*len(t.names))
		for _, n := range t.names {
			t.seen[n] = struct{}{}
		}
	}
}

// addAll adds every name of names.
func (t *topicSet) addAll(names []string) {
	for _, n := range names {
		t.add(n)
	}
}

// unnamed adds "", a topic the inspector cannot name.
func (t *topicSet) unnamed() { t.add("") }

// ref adds a topic given by name, or by id when the name is empty (as it
// is in versions that carry only ids).
func (t *topicSet) ref(name string, id [16]byte) {
	switch {
	case name != "":
		t.add(name)
	case id != [16]byte{}:
		t.add(t.st.topicName(id))
	default:
		t.add("")
	}
}

// refPtr is ref for a nullable name.
func (t *topicSet) refPtr(name *string, id [16]byte) {
	if name != nil {
		t.ref(*name, id)
		return
	}
	t.ref("", id)
}

// id adds a topic given only by id.
func (t *topicSet) id(id [16]byte) { t.ref("", id) }
