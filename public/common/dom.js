// What every hookbot page shares: building DOM nodes, showing bodies. Webhook contents come
// from anyone, so text only ever goes in as textContent, never as HTML.
'use strict';

window.hookbotDom = {
  $: (id) => document.getElementById(id),
  el: (tag, props = {}, children = []) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === 'text') node.textContent = v;
      else if (k === 'class') node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  },
  /** A hookbot.v1 message body for reading: JSON pretty-printed, anything else (base64 included) as it is. */
  prettyBody: (m) => {
    if (m.encoding === 'base64') return m.body;
    try {
      return JSON.stringify(JSON.parse(m.body), null, 2);
    } catch {
      return m.body;
    }
  },
};
