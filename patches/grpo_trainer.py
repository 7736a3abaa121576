"""Edits to TRL 1.15.0 ``trl/trainer/grpo_trainer.py``: each inserts one hook into grpo-custom.

The hooks live in :mod:`grpo_custom.fork.hooks`, imported into the fork under the module-level
name ``grpo_custom_hooks``. Unsloth copies every module-level name of the trainer module into the
``UnslothGRPOTrainer`` it generates, so the same hooks run there too.
"""
from grpo_custom.fork.source_edit import SourceEdit

GRPO_TRAINER_EDITS = (
    SourceEdit(
        name="config_and_hooks",
        reason="the fork's config adds grpo-custom's options; the hooks module is where every edit calls",
        anchor="from .grpo_config import GRPOConfig\n",
        replacement=(
            "from grpo_custom.fork.config import GRPOConfig\n"
            "from grpo_custom.fork import hooks as grpo_custom_hooks\n"
        ),
    ),
    SourceEdit.insert_before(
        name="task_reward_routing",
        reason="task_rewards in the config become reward functions that score only their task's samples",
        anchor="        # Reward functions\n        if reward_funcs is None:\n",
        text="        reward_funcs = grpo_custom_hooks.prepare_reward_funcs(args, reward_funcs)\n",
    ),
    SourceEdit.insert_before(
        name="configure_trainer",
        reason="resolve estimator, regularizers, schedule and reward guards once the reward functions are named",
        anchor="        # Reward processing class\n",
        text="        grpo_custom_hooks.configure_trainer(self, args)\n",
    ),
    SourceEdit.insert_before(
        name="curriculum",
        reason="once Trainer.__init__ has run: check that a gated reward schedule can evaluate, add its callback",
        anchor="        # Reference model\n        self.beta = args.beta\n",
        text="        grpo_custom_hooks.attach_curriculum(self, args)\n",
    ),
    SourceEdit.insert_after(
        name="value_function_check",
        reason="once Trainer.__init__ has run: what value_function needs of the model, before any generation",
        anchor="        # Reference model\n        self.beta = args.beta\n",
        text="        grpo_custom_hooks.check_value_function(self)\n",
    ),
    SourceEdit(
        name="reference_model_gate",
        reason="a KL regularizer needs the reference model even when TRL's beta is 0",
        anchor="        if self.beta == 0.0:\n            # If beta is 0.0, the reference model is not needed\n",
        replacement=(
            "        if self.beta == 0.0 and not grpo_custom_hooks.needs_reference_logps(args):\n"
            "            # If beta is 0.0, the reference model is not needed\n"
        ),
    ),
    SourceEdit(
        name="in_memory_reference_model",
        reason="a full model built in memory has no path TRL could reload its reference from: copy it instead",
        anchor="            self.ref_model = create_model_from_path(get_config_model_id(self.model.config), **model_init_kwargs)\n",
        replacement="            self.ref_model = grpo_custom_hooks.reference_model(self.model, model_init_kwargs)\n",
    ),
    SourceEdit(
        name="reference_logps_gate",
        reason="a KL regularizer needs reference log-probs even when TRL's beta is 0",
        anchor=(
            "            # Compute the per-token log probabilities for the reference model\n"
            "            if self.beta != 0.0:\n"
        ),
        replacement=(
            "            # Compute the per-token log probabilities for the reference model\n"
            "            if self.beta != 0.0 or grpo_custom_hooks.needs_reference_logps(self.args):\n"
        ),
    ),
    SourceEdit.insert_after(
        name="step_aware_rewards",
        reason="apply the reward schedule's weights for this batch; step/progress/stage reach reward functions "
               "through their guard, never through TRL's per-row reward_kwargs",
        anchor='        reward_kwargs["trainer_state"] = self.state\n',
        text="        grpo_custom_hooks.before_reward_functions(self, inputs, prompts, completions)\n",
    ),
    SourceEdit.insert_after(
        name="scored_reward_check",
        reason="TRL scores an nn.Module reward model with no guard, and stores rewards as float32: NaN/inf scores "
               "past the guard get the reward_errors policy",
        anchor="        rewards_per_func = self._calculate_rewards(inputs, prompts, completions, completion_ids_list)\n",
        text="        rewards_per_func = grpo_custom_hooks.check_scored_rewards(self, rewards_per_func)\n",
    ),
    SourceEdit.insert_after(
        name="value_rollout",
        reason="value_function: the critic's old values V_old of the generated batch (one no-grad decoder forward)",
        anchor=(
            "        logits_to_keep = completion_ids.size(1)  # we only need to compute the logits for the completion tokens\n"
            "        batch_size = self.args.per_device_train_batch_size if mode == \"train\" else "
            "self.args.per_device_eval_batch_size\n"
        ),
        text="        grpo_custom_hooks.rollout_values(self, prompt_completion_ids, attention_mask, logits_to_keep)\n",
    ),
    SourceEdit.insert_after(
        name="advantage_estimator",
        reason="replace the inline GRPO advantages by the configured estimator (and reward-placed penalties); "
               "tool_mask: tokens a tool wrote are not scored (GAE skips them)",
        anchor="        advantages = torch.nan_to_num(advantages, nan=0.0)\n",
        text=(
            "        advantages = grpo_custom_hooks.compute_advantages(\n"
            "            self,\n"
            "            rewards_per_func=rewards_per_func,\n"
            "            num_generations=num_generations,\n"
            "            completion_mask=completion_mask,\n"
            "            prompt_ids=prompt_ids,\n"
            "            generated_lengths=grpo_custom_hooks.generated_lengths(completion_ids_list, tool_mask_list, device),\n"
            "            trl_advantages=advantages,\n"
            "            tool_mask=tool_mask,\n"
            "            inputs=inputs,\n"
            "            mode=mode,\n"
            "            ref_per_token_logps=ref_per_token_logps,\n"
            "            old_per_token_logps=old_per_token_logps,\n"
            "            policy_per_token_logps=lambda: self._get_per_token_logps_and_entropies(\n"
            "                self.model, prompt_completion_ids, attention_mask, logits_to_keep, batch_size=batch_size,\n"
            "                num_images=num_images, num_tiles=num_tiles, **forward_kwargs,\n"
            "            )[0],\n"
            "        )\n"
        ),
    ),
    SourceEdit.insert_before(
        name="policy_loss",
        reason="the configured policy loss replaces TRL's per-token policy term (kept as is for the default ppo_clip)",
        anchor=(
            "        if self.off_policy_mask_threshold is not None:\n"
            "            per_token_loss = per_token_loss * off_policy_mask\n"
        ),
        text=(
            "        per_token_loss = grpo_custom_hooks.policy_per_token_loss(\n"
            "            self, per_token_loss, per_token_logps=per_token_logps, old_per_token_logps=old_per_token_logps,\n"
            "            advantages=advantages, mask=mask,\n"
            "        )\n"
        ),
    ),
    SourceEdit.insert_after(
        name="loss_regularizers",
        reason="add the configured per-token regularizer terms before the loss type's aggregation",
        anchor=(
            "        if self.beta != 0.0:\n"
            "            per_token_loss = per_token_loss + self.beta * per_token_kl\n"
        ),
        text=(
            "        per_token_loss = grpo_custom_hooks.add_loss_regularizers(\n"
            "            self, per_token_loss, per_token_logps=per_token_logps, old_per_token_logps=old_per_token_logps,\n"
            "            inputs=inputs, mask=mask, advantages=advantages, entropies=entropies,\n"
            "        )\n"
        ),
    ),
    SourceEdit.insert_after(
        name="value_capture",
        reason="value_function: keep the hidden states of the loss's policy forward for the value head (no second forward)",
        anchor='        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]\n',
        text="        grpo_custom_hooks.begin_value_capture(self, inputs)\n",
    ),
    SourceEdit.insert_before(
        name="parameter_regularizers",
        reason="add parameter-space regularizers (e.g. lora_l2) to the aggregated loss",
        anchor="        # Entropy bonus: add entropy regularization to encourage exploration.",
        text="        loss = loss + grpo_custom_hooks.parameter_regularizer_loss(self, model)\n",
    ),
    SourceEdit.insert_before(
        name="value_loss",
        reason="value_function: the clipped value loss (head only, or coef times it through the shared LoRA)",
        anchor=("        # The policy loss above is scaled for gradient accumulation (HF auto-scaling is off here), "
                "so scale aux too\n"),
        text="        loss = loss + grpo_custom_hooks.value_function_loss(self, inputs)\n",
    ),
    SourceEdit.insert_before(
        name="value_outputs",
        reason="value_function: V_old and the critic's returns travel with the batch through TRL's shuffle and split",
        anchor='        if old_per_token_logps is not None:\n            output["old_per_token_logps"] = old_per_token_logps\n',
        text="        grpo_custom_hooks.add_value_outputs(self, output)\n",
    ),
    SourceEdit.insert_after(
        name="save_state",
        reason="checkpoints keep grpo-custom's running statistics (per-task reward normalization)",
        anchor="        super()._save_checkpoint(model, trial)\n",
        text="        grpo_custom_hooks.save_checkpoint_state(self, trial)\n",
    ),
    SourceEdit.insert_after(
        name="load_state",
        reason="resuming restores grpo-custom's running statistics exactly",
        anchor="        super()._load_optimizer_and_scheduler(checkpoint)\n",
        text="        grpo_custom_hooks.load_checkpoint_state(self, checkpoint)\n",
    ),
    SourceEdit(
        name="task_balanced_sampler",
        reason="task_balance=True draws prompts task-balanced, in RepeatSampler's layout so groups stay intact",
        anchor="            dataset = self.train_dataset\n        return RepeatSampler(\n",
        replacement=(
            "            dataset = self.train_dataset\n"
            "        if (balanced_sampler := grpo_custom_hooks.task_balanced_sampler(self, dataset)) is not None:\n"
            "            return balanced_sampler\n"
            "        return RepeatSampler(\n"
        ),
    ),
)
