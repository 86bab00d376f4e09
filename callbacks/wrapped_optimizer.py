"""The delegation shared by optimizers that wrap another one (`Lookahead`, `GradientAccumulation`)."""

import keras


class WrappedOptimizer(keras.optimizers.Optimizer):
    """An optimizer around `inner_optimizer`, whose learning rate, iterations, loss scaling
    and final values are the inner optimizer's; its own variables come first in `variables`.

    Subclasses extend `build` (after calling it) and implement `apply`, starting with
    `self._build_once(trainable_variables)`.

    Args:
        optimizer: the Keras optimizer to wrap.
        name: the wrapper's name.
    """

    def __init__(self, optimizer, name):
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = optimizer

    def build(self, var_list):
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    def _build_once(self, trainable_variables):
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        # The base constructor sets a placeholder before the inner optimizer exists.
        if "inner_optimizer" in self.__dict__:
            self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        return {"name": self.name,
                "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        optimizer = keras.saving.deserialize_keras_object(config.pop("optimizer"),
                                                         custom_objects=custom_objects)
        return cls(optimizer, **config)
