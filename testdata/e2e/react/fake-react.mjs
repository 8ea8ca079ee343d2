// Just enough React to run README's VoiceAgent.jsx under Node: one root
// component, useState/useRef/useMemo/useEffect, elements as plain objects.
// An element whose type has mount() (the stand-in component) is mounted
// once and given its props on every render, its ref set to the instance.
let hooks = [];
let index = 0;
let root = null;
let tree = null;
let pending = false;
const effects = [];
const instances = new Map();

export function h(type, props, ...children) {
  return { type, props: props ?? {}, children: children.flat() };
}
function changed(a, b) {
  return !a || !b || a.length !== b.length || a.some((v, i) => !Object.is(v, b[i]));
}
export function useState(init) {
  const i = index++;
  if (!(i in hooks)) hooks[i] = { value: init };
  const slot = hooks[i];
  return [slot.value, (v) => { slot.value = typeof v === "function" ? v(slot.value) : v; schedule(); }];
}
export function useRef(init) {
  const i = index++;
  if (!(i in hooks)) hooks[i] = { current: init };
  return hooks[i];
}
export function useMemo(fn, deps) {
  const i = index++;
  if (!(i in hooks) || changed(hooks[i].deps, deps)) hooks[i] = { value: fn(), deps };
  return hooks[i].value;
}
export function useEffect(fn, deps) {
  const i = index++;
  if (!(i in hooks) || changed(hooks[i].deps, deps)) {
    hooks[i] = { deps };
    effects.push(fn);
  }
}
function schedule() {
  if (pending) return;
  pending = true;
  queueMicrotask(render);
}
function walk(el) {
  if (!el || typeof el !== "object") return;
  if (el.type && el.type.mount) {
    let inst = instances.get(el.type);
    if (!inst) instances.set(el.type, (inst = el.type.mount()));
    inst.props = el.props;
    if (el.props.ref) el.props.ref.current = inst;
  }
  el.children?.forEach(walk);
}
function render() {
  pending = false;
  index = 0;
  tree = root();
  walk(tree);
  effects.splice(0).forEach((fn) => fn());
}
export function mount(component) {
  root = component;
  render();
}
// click presses the button whose text is label.
export function click(label) {
  const find = (el) => {
    if (!el || typeof el !== "object") return null;
    if (el.type === "button" && el.children.join("") === label) return el;
    for (const c of el.children ?? []) {
      const f = find(c);
      if (f) return f;
    }
    return null;
  };
  return find(tree).props.onClick();
}
export function text() {
  const all = [];
  const go = (el) => (typeof el === "string" ? all.push(el) : el?.children?.forEach(go));
  go(tree);
  return all.join(" ");
}
